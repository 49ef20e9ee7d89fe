"""Milvus (Lite) vs the FAISS path on the demo corpus: recall@10 of the same queries, and latency.

    python bench/run.py --out bench --only milvus_recall        # part of `make bench`; ~1 min

Both hold the demo run's int8 pin codes (Milvus as the dequantized FLOAT_VECTORs). Queries: the
text embeddings (text_q) of 1,000 demo pins, as a stand-in for typed searches, and 1,000 stored pin
vectors (related pins). Ground truth is exact inner-product search over the dequantized codes;
recall@10 is measured for the served FAISS index and for Milvus Lite with FLAT and IVF_FLAT.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BenchContext, BenchResult, Target, fmt, median

QUERIES = 1000


def query_sets(run: Path, n: int) -> dict[str, np.ndarray]:
    from pinclip.quant import dequantize
    from pinclip.serve.index import load_embeddings

    texts, pins = load_embeddings(run / "embed", "text"), load_embeddings(run / "embed", "pin")
    rng = np.random.default_rng(0)
    pick_t = rng.choice(len(texts.codes), size=min(n, len(texts.codes)), replace=False)
    pick_p = rng.choice(len(pins.codes), size=min(n, len(pins.codes)), replace=False)
    return {"text queries": dequantize(texts.codes[pick_t], texts.quant),
            "stored pins": dequantize(pins.codes[pick_p], pins.quant)}


def measure(backend: Any, queries: np.ndarray, truth: list[list[str]]) -> dict[str, float]:
    found, ms = [], []
    for q in queries:
        t0 = time.perf_counter()
        found += backend.search(q[None, :], 10)[1]
        ms.append((time.perf_counter() - t0) * 1000)
    recall = np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])
    return {"recall@10": float(recall), "p50_ms": median(ms)}


def run(ctx: BenchContext) -> BenchResult:
    from pinclip.quant import dequantize
    from pinclip.serve.ann_tuning import exact_top_k
    from pinclip.serve.index import PinIndex, load_embeddings
    from pinclip.serve.milvus_backend import MilvusBackend

    run_dir = ctx.demo_run
    if not (run_dir / "embed" / "manifest.json").is_file():
        return BenchResult("milvus_recall", "Milvus vs FAISS", error=f"needs the demo run ({run_dir}): make demo")
    emb = load_embeddings(run_dir / "embed", "pin")
    base = dequantize(emb.codes, emb.quant)  # (N, D)
    faiss_index = PinIndex.load(run_dir / "index")
    sets = query_sets(run_dir, 100 if ctx.quick else QUERIES)
    figures: dict[str, Any] = {"pins": len(emb.pin_ids), "faiss_kind": faiss_index.meta.kind}
    with tempfile.TemporaryDirectory() as tmp:
        backends = {"FAISS (served index)": faiss_index}
        for kind in ("FLAT", "IVF_FLAT"):
            backends[f"Milvus Lite {kind}"] = MilvusBackend.build(str(Path(tmp) / f"{kind}.db"), "pins", emb,
                                                                 index_type=kind)
        for set_name, queries in sets.items():
            truth = [[emb.pin_ids[i] for i in row] for row in exact_top_k(queries, base, 10).tolist()]
            for name, backend in backends.items():
                figures[f"{name} / {set_name}"] = measure(backend, queries, truth)
        for name, backend in backends.items():
            if name.startswith("Milvus"):
                figures[f"{name} params"] = backend.meta.params
                backend.close()
    return report(figures)


def report(f: dict[str, Any]) -> BenchResult:
    result = BenchResult("milvus_recall", f"Milvus Lite vs the FAISS path ({f['pins']:,} demo pins)", figures=f)
    rows = {k: v for k, v in f.items() if isinstance(v, dict) and "recall@10" in v}
    flat = [v["recall@10"] for k, v in rows.items() if k.startswith("Milvus Lite FLAT")]
    faiss = [v["recall@10"] for k, v in rows.items() if k.startswith("FAISS")]
    result.targets = [Target("Milvus Lite FLAT recall@10 vs the FAISS path", ">= FAISS - 0.005",
                             f"{min(flat):.4f} (FAISS {min(faiss):.4f})", min(flat) >= min(faiss) - 0.005)]
    result.table = [{"backend / queries": k, "recall@10 vs exact": fmt(v["recall@10"], 4), "p50 (ms)": fmt(v["p50_ms"])}
                    for k, v in rows.items()]
    result.notes = ["exact truth: inner products over the dequantized int8 codes; the served FAISS index is the "
                    f"demo's ({f['faiss_kind']}); Milvus IVF_FLAT params {f.get('Milvus Lite IVF_FLAT params')}",
                    "on a cluster the backend builds IVF_SQ8 (int8 inside Milvus); not measured here (no cluster)"]
    return result
