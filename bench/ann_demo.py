"""ANN recall on the demo's real embeddings with cross-modal queries: text queries against pin vectors.

Used by bench/search_scale.py. Pins: the int8 `pin` codes of <demo-run>/embed (what `pinclip index
build` indexes). Queries: the demo's board titles and pin search queries (distinct strings, a seeded
sample of each), embedded by the served model (<demo-run>/mixed or train/final) in text mode with
the `queries` field tag, as GET /search/text embeds a typed query. Truth: exact top-10 by inner
product over the dequantized codes. Measured: the kind `pinclip index build` picks by default for
this size (exact below IndexConfig.flat_max), and the IVF configuration as built (nlist, nprobe
tuned by PinIndex.build) with its recall–nprobe curve.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.ann_data import embedding_stats
from bench.ann_peers import recall_of, served_contender, sweep


def demo_texts(data_dir: Path, per_source: int, seed: int = 0) -> tuple[list[str], dict[str, int]]:
    """Up to per_source distinct board titles and per_source distinct pin search queries, sampled."""
    import pyarrow.parquet as pq

    titles = pq.read_table(data_dir / "boards.parquet", columns=["board_title"]).column(0).to_pylist() \
        if "board_title" in pq.read_schema(data_dir / "boards.parquet").names else []
    queries = [q for row in pq.read_table(data_dir / "pins.parquet", columns=["queries"]).column(0).to_pylist()
               for q in (row or [])]
    rng, texts, counts = np.random.default_rng(seed), [], {}
    for name, values in (("board titles", titles), ("pin search queries", queries)):
        distinct = sorted({v.strip() for v in values if v and v.strip()})
        picked = [distinct[i] for i in np.sort(rng.choice(len(distinct), min(per_source, len(distinct)), replace=False))]
        texts += picked
        counts[name] = len(picked)
    return texts, counts


def text_embedder(demo_run: Path, model_version: str) -> Any:
    """The served model of the run if it made these embeddings (same version), else None."""
    from pinclip.eval.mix_cli import served_checkpoint
    from pinclip.models.embedder import Embedder

    checkpoint = served_checkpoint(demo_run)
    if not (checkpoint / "meta.json").is_file():
        return None
    embedder = Embedder.from_checkpoint(checkpoint)
    return embedder if str(embedder.version) == str(model_version) else None


def demo_cross_modal(demo_run: Path, per_source: int, threads: int) -> dict[str, Any]:
    """Figures of the demo measurement, or {"skipped": why} when the demo run lacks what it needs."""
    from pinclip.eval.metrics import exact_topk
    from pinclip.quant import dequantize
    from pinclip.serve.index import IndexConfig, PinIndex, choose_kind, load_embeddings

    embed_dir = demo_run / "embed"
    if not (embed_dir / "manifest.json").is_file():
        return {"skipped": f"no finished embedding run at {embed_dir}"}
    emb = load_embeddings(embed_dir, "pin")
    embedder = text_embedder(demo_run, emb.model_version)
    if embedder is None:
        return {"skipped": f"no checkpoint of model {emb.model_version} (the one that embedded the pins) in {demo_run}"}
    texts, counts = demo_texts(demo_run / "data", per_source)
    start = time.perf_counter()
    queries = np.ascontiguousarray(embedder.embed_texts(texts, field="queries"), dtype=np.float32)  # (Q, D)
    embed_s = time.perf_counter() - start
    vectors = dequantize(emb.codes, emb.quant)  # (N, D)
    top_scores, truth = exact_topk(queries, vectors, 10)  # (Q, 10) each
    start = time.perf_counter()
    index = PinIndex.build(emb.codes, emb.pin_ids, emb.quant, emb.model_version, config=IndexConfig(kind="ivf"))
    build_s = time.perf_counter() - start
    ivf = served_contender(index, build_s, float("nan"))
    ivf.set_param(index.meta.params["nprobe"])
    recall_as_built = recall_of(ivf, queries, truth, threads)
    return {
        "n": len(emb.codes), "queries": len(texts), "query_sources": counts, "model_version": emb.model_version,
        "embed_s": embed_s, "default_kind": choose_kind(len(emb.codes), IndexConfig()),
        "flat_max": IndexConfig().flat_max, "params": index.meta.params, "build_s": build_s,
        "recall_as_built": recall_as_built, "curve": sweep(ivf, queries, truth, threads, stop_recall=1.0),
        "stats": embedding_stats(vectors, queries, top_scores),
    }

