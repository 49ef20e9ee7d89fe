"""Search at scale: 1M synthetic 256-d int8 vectors whose clusters overlap, out-of-distribution queries;
the served index (PinIndex, IVF-SQ8) beside HNSW peers, and its recall on the demo's real embeddings.

    python bench/run.py --out bench --only search_scale [--quick]      # ~15 min on 2 cores; --quick ~2 min

Vectors: bench.ann_data.LowRankMixture (1,000 overlapping clusters in a 128-d latent space with a
shared mean direction), stored as int8 with one global affine scale (pinclip.quant.fit_global_affine
on a 20k sample). Queries: 1,000 text-like queries from another distribution (opposite mean
direction, half of them blending two clusters) and 1,000 held-out pins. Truth: exact top-10 by
inner product over the dequantized codes. Measured:
  - IVF-SQ8 PinIndex (kind "ivf"; nlist = 4·√N, nprobe tuned by the index to recall@10 >= 0.95):
    build time, FAISS index bytes vs the raw codes, RSS growth, k=10 single-query latency
    in-process, Recall@10;
  - raw FAISS: the same index object's search called directly (wrapper overhead), and a plain
    IndexIVFScalarQuantizer with the same nlist built from scratch (build overhead);
  - recall–nprobe curves of the served index and recall–ef curves of usearch (HNSW over the same
    int8 codes) and hnswlib (HNSW over float32), each at the smallest parameter reaching R@10 >= 0.95
    on the out-of-distribution queries: batch QPS (all cores, interleaved rounds), single-query QPS
    (one thread), index bytes, build time (bench.ann_compare, bench.ann_peers). A peer's build stops
    at a time budget (usearch 240 s, hnswlib 200 s) and is then measured on the rows it holds;
    --quick builds hnswlib on half the rows to run that path;
  - HNSW-SQ8 (M=32) on a 100k subset and an exact SQ8 scan;
  - the HTTP service (create_app with a stub embedder, uvicorn in a subprocess): /search/text
    latency; HTTP overhead = HTTP p50 - in-process p50;
  - the demo run's pin vectors under its board titles and pin search queries embedded as text
    (bench.ann_demo): the default index kind for that size and the IVF recall–nprobe curve;
  - how each data set sits (bench.ann_data.embedding_stats), beside a well-separated sphere mixture
    (SphereMixture, 1,000 points a cluster) where every query's top-10 lies in its own cluster.
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.ann_compare import QUERY_SETS, ann_table, ann_targets, curve_text, measure_ann, stats_rows
from bench.ann_data import DIM, LowRankMixture, embedding_stats
from bench.ann_demo import demo_cross_modal
from bench.common import (
    REPO,
    BenchContext,
    BenchResult,
    Target,
    current_rss_mb,
    fmt,
    median,
    percentile,
)
from bench.report import markdown_table
from pinclip.serve.ann_tuning import recall_at_k as recall10

TARGETS = {"p99_ms": 10.0, "http_ms": 2.0, "memory": 1.3}
THREADS = os.cpu_count() or 1
DEMO_SIZE = 8_202  # pins in the demo corpus: the synthetic statistics are also taken at this size


class SphereMixture:
    """Gaussian mixture on the unit sphere: centers uniform on the sphere, Zipf(0.7) cluster weights.
    Each point is normalize(center + spread · g/√D); at spread 1 the clusters barely touch (control)."""

    def __init__(self, dim: int, clusters: int, spread: float, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        centers = rng.standard_normal((clusters, dim)).astype(np.float32)
        self.centers = centers / np.linalg.norm(centers, axis=1, keepdims=True)  # (K, D)
        weights = 1.0 / np.arange(1, clusters + 1) ** 0.7
        self.weights, self.spread, self.dim = weights / weights.sum(), spread, dim

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, D) float32 unit vectors."""
        which = rng.choice(len(self.centers), size=n, p=self.weights)
        x = self.centers[which] + self.spread * rng.standard_normal((n, self.dim)).astype(np.float32) / np.sqrt(self.dim)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_codes(sample: Callable[[int, np.random.Generator], np.ndarray], n: int, seed: int, chunk: int = 50_000):
    """(codes (n, D) int8, GlobalAffine) of sample(n, rng), the scale fitted on a 20k calibration sample."""
    from pinclip.quant import fit_global_affine, quantize

    rng = np.random.default_rng(seed)
    quant = fit_global_affine(sample(20_000, rng))
    codes = np.empty((n, DIM), np.int8)
    for lo in range(0, n, chunk):
        codes[lo : lo + chunk] = quantize(sample(min(chunk, n - lo), rng), quant)
    return codes, quant


def exact_truth(queries: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-10 (scores (Q, 10), row ids (Q, 10)) by inner product (pinclip.eval.metrics.exact_topk)."""
    from pinclip.eval.metrics import exact_topk

    return exact_topk(queries, vectors, 10)


def single_query_ms(search, queries: np.ndarray) -> list[float]:
    """Milliseconds of search(q (1, D)) for each query, one at a time."""
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None, :])
        times.append((time.perf_counter() - start) * 1e3)
    return times


def raw_faiss_build_s(codes: np.ndarray, quant, nlist: int, seed: int) -> float:
    """Seconds to build a plain FAISS IVF-SQ8 (per-dimension QT_8bit, same nlist and sample size)."""
    import faiss

    from pinclip.quant import dequantize

    start = time.perf_counter()
    vectors = dequantize(codes, quant)
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(len(vectors), size=min(len(vectors), 64 * nlist), replace=False)]
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(codes.shape[1]), codes.shape[1], nlist,
                                          faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    index.add(vectors)
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_latencies_ms(index_dir: Path, queries: np.ndarray, n: int, timeout_s: float = 300) -> tuple[list[float], int]:
    """(ms per GET /search/text?q=q<i>&k=10, hits in the last answer) against the service in a subprocess."""
    np.save(index_dir / "queries.npy", queries)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.stub_server", "--index", str(index_dir),
                               "--queries", str(index_dir / "queries.npy"), "--port", str(port)], cwd=REPO)
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", "/health")
                if conn.getresponse().read():
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the stub service did not start (exit code {server.poll()})") from None
                time.sleep(0.5)
        times, hits = [], 0
        for i in range(-10, n):  # 10 warm-up requests
            start = time.perf_counter()
            conn.request("GET", f"/search/text?q=q{max(i, 0)}&k=10")
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"/search/text answered {response.status}: {body[:200]!r}")
            if i >= 0:
                times.append((time.perf_counter() - start) * 1e3)
        hits = len(json.loads(body)["results"])
        return times, hits
    finally:
        server.terminate()
        server.wait(timeout=30)


def hnsw_subset(codes: np.ndarray, quant, queries: np.ndarray, truth: np.ndarray, n: int) -> dict:
    """HNSW-SQ8 PinIndex on the first n codes: build s, index bytes / codes bytes, p50 ms, recall@10."""
    import faiss

    from pinclip.serve.index import IndexConfig, PinIndex

    start = time.perf_counter()
    index = PinIndex.build(codes[:n], [f"p{i}" for i in range(n)], quant, "bench", config=IndexConfig(kind="hnsw"))
    build_s = time.perf_counter() - start
    size = len(faiss.serialize_index(index.faiss_index))
    found = np.concatenate([index.faiss_index.search(q[None, :], 10)[1] for q in queries])
    return {"n": n, "build_s": build_s, "memory_ratio": size / codes[:n].nbytes,
            "p50_ms": median(single_query_ms(lambda q: index.search(q, 10), queries)),
            "recall@10": recall10(found, truth), "params": index.meta.params}


def flat_scan_p50_ms(codes: np.ndarray, quant, queries: np.ndarray) -> float:
    """p50 ms of an exact SQ8 scan (FAISS IndexScalarQuantizer) over all codes."""
    from pinclip.quant import dequantize, faiss_sq_index

    index = faiss_sq_index(quant, codes.shape[1], "flat")
    for lo in range(0, len(codes), 100_000):
        index.add(dequantize(codes[lo : lo + 100_000], quant))
    return median(single_query_ms(lambda q: index.search(q, 10), queries))


def measure_ivf(ctx: BenchContext, codes: np.ndarray, quant, queries: np.ndarray, truth: np.ndarray,
                tune_queries: np.ndarray | None = None) -> tuple[dict, Any]:
    """(figures, index): the IVF PinIndex over all codes, measured in-process, raw and over HTTP; `tune_queries`:
    the stand-in for the run's own text embeddings that `pinclip index build` tunes nprobe on (a separate draw
    from the measured queries)."""
    import faiss

    from pinclip.serve.index import IndexConfig, PinIndex

    pin_ids = [f"p{i:07d}" for i in range(len(codes))]
    gc.collect()
    rss0, start = current_rss_mb(), time.perf_counter()
    index = PinIndex.build(codes, pin_ids, quant, "bench-synthetic", config=IndexConfig(kind="ivf"),
                           tune_queries=tune_queries)
    build_s = time.perf_counter() - start
    gc.collect()
    rss_delta = current_rss_mb() - rss0
    found = np.concatenate([index.faiss_index.search(q[None, :], 10)[1] for q in queries])
    ours, raw = [], []
    for q in queries:  # interleaved: our wrapper, then the same FAISS index directly
        ours += single_query_ms(lambda x: index.search(x, 10), q[None, :])
        raw += single_query_ms(lambda x: index.faiss_index.search(x, 10), q[None, :])
    with tempfile.TemporaryDirectory(dir=ctx.out) as tmp:
        index.save(tmp)
        try:
            http_ms, hits, http_error = *http_latencies_ms(Path(tmp), queries, len(queries)), None
        except RuntimeError as err:  # the service failing must not lose the index figures
            http_ms, hits, http_error = [float("nan")], 0, str(err)
    faiss_bytes = len(faiss.serialize_index(index.faiss_index))
    return {
        "n": len(codes), "queries": len(queries), "build_s": build_s, "rss_delta_mb": rss_delta,
        "faiss_index_bytes": faiss_bytes, "raw_code_bytes": int(codes.nbytes), "memory_ratio": faiss_bytes / codes.nbytes,
        "params": dict(index.meta.params), "recall@10": recall10(found, truth),
        "inproc_p50_ms": median(ours), "inproc_p99_ms": percentile(ours, 99),
        "raw_faiss_p50_ms": median(raw), "raw_faiss_p99_ms": percentile(raw, 99),
        "http_p50_ms": median(http_ms), "http_p99_ms": percentile(http_ms, 99), "http_hits": hits,
        "http_overhead_ms": median(http_ms) - median(ours), "http_error": http_error,
    }, index


def control_stats(n: int, n_queries: int) -> dict:
    """embedding_stats of a well-separated sphere mixture (1,000 points a cluster, queries from the same
    mixture), where every query's top-10 lies in its own cluster."""
    sphere = SphereMixture(DIM, max(1, n // 1000), 1.0)
    rng = np.random.default_rng(5)
    vectors, queries = sphere.sample(n, rng), sphere.sample(n_queries, rng)
    return {"n": n, "clusters": len(sphere.centers),
            "stats": embedding_stats(vectors, queries, exact_truth(queries, vectors)[0])}


def data_stats(mixture: LowRankMixture, vectors: np.ndarray, queries: dict, truth: dict, demo: dict,
               control: dict) -> dict:
    """embedding_stats of the demo, the synthetic data at the demo's size and at full size, and the control."""
    from pinclip.quant import dequantize

    small_codes, small_quant = make_codes(mixture.base, DEMO_SIZE, seed=4)
    small = dequantize(small_codes, small_quant)
    stats = {} if "stats" not in demo else {f"demo pins ({demo['n']:,}), text queries": demo["stats"]}
    stats[f"synthetic ({DEMO_SIZE:,}), text-like queries"] = embedding_stats(
        small, queries["ood"], exact_truth(queries["ood"], small)[0])
    for name in QUERY_SETS:
        stats[f"synthetic ({len(vectors):,}), {QUERY_SETS[name].split(' (')[0]}"] = embedding_stats(
            vectors, queries[name], truth[name][0])
    stats[f"control: separated sphere mixture ({control['n']:,}, {control['clusters']:,} clusters), same-mixture "
          "queries"] = control["stats"]
    return stats


def latency_table(f: dict) -> list[dict[str, Any]]:
    """The served index's single-query latency, in-process, raw and over HTTP, beside HNSW-SQ8 and a flat scan."""
    p, h, n = f["params"], f["hnsw_subset"], f"{f['n']:,}"
    return [
        {"index": f"IVF-SQ8 (ours, nlist={p['nlist']}, nprobe={p.get('nprobe')})", "N": n, "build (s)": fmt(f["build_s"]),
         "bytes / codes": fmt(f["memory_ratio"]), "p50 (ms)": fmt(f["inproc_p50_ms"]),
         "p99 (ms)": fmt(f["inproc_p99_ms"]), "R@10 ood": fmt(f["recall@10"])},
        {"index": "same FAISS index, called directly", "N": n, "build (s)": fmt(f["raw_faiss_build_s"]) + " (plain IVF-SQ8)",
         "bytes / codes": fmt(f["memory_ratio"]), "p50 (ms)": fmt(f["raw_faiss_p50_ms"]),
         "p99 (ms)": fmt(f["raw_faiss_p99_ms"]), "R@10 ood": fmt(f["recall@10"])},
        {"index": "HTTP /search/text (stub embedder)", "N": n, "p50 (ms)": fmt(f["http_p50_ms"]),
         "p99 (ms)": fmt(f["http_p99_ms"])},
        {"index": f"FAISS HNSW-SQ8 (our kind \"hnsw\", M=32, efSearch={h['params'].get('ef_search')})",
         "N": f"{h['n']:,}", "build (s)": fmt(h["build_s"]), "bytes / codes": fmt(h["memory_ratio"]),
         "p50 (ms)": fmt(h["p50_ms"]), "R@10 ood": fmt(h["recall@10"])},
        {"index": "exact SQ8 scan (flat)", "N": n, "bytes / codes": "~1", "p50 (ms)": fmt(f["flat_scan_p50_ms"]),
         "R@10 ood": "1"},
    ]


def curves_markdown(f: dict) -> list[str]:
    """Recall@10 per search parameter, each contender and query set, and the demo's curve."""
    a, demo = f["ann"], f["demo"]
    lines = ["Recall@10 curves (parameter: R@10; each sweep stops at R@10 >= 0.99):", ""]
    for c in a["contenders"].values():
        for name, curve in c["curves"].items():
            lines.append(f"- {c['name']} ({c['n']:,}), {QUERY_SETS[name]}, {c['param']}: {curve_text(curve)}")
    if "curve" in demo:
        lines.append(f"- demo IVF-SQ8 ({demo['n']:,} pins, nlist={demo['params']['nlist']}), text queries, nprobe: "
                     f"{curve_text(demo['curve'])}")
    return [*lines, "", "How each data set sits (bench.ann_data.embedding_stats: contrast = (top-10 score - mean "
            "score) / score std, per query):", "", *markdown_table(stats_rows(f["stats"]))]


def notes(f: dict) -> list[str]:
    a, p, h, demo = f["ann"], f["params"], f["hnsw_subset"], f["demo"]
    served = a["contenders"]["served"]
    out = [
        f"Data: bench.ann_data.LowRankMixture, {f['n']:,} pins as global-affine int8; {f['queries']:,} text-like "
        "queries (opposite mean direction, half blending two clusters) and as many held-out pins. At the demo's "
        "size the synthetic statistics sit close to the demo's (table below); a separated sphere mixture, where "
        "every query's top-10 lies in its own cluster, stands apart from both (control row).",
        f"Threads: batch QPS = {f['queries']:,} queries a call on {a['threads']} threads in every library (FAISS "
        f"OpenMP, usearch threads, hnswlib num_threads), median of {a['rounds']} interleaved rounds; 1-query QPS = "
        "one query a call on one thread. The served rows time the FAISS index inside PinIndex; PinIndex.search adds "
        f"{f['inproc_p50_ms'] - f['raw_faiss_p50_ms']:.3f} ms a query at p50 (pin-id lookup).",
        f"The served index tunes nprobe at build on stored pins and random directions (the harder set): nprobe="
        f"{a['nprobe_tuned']} of nlist={a['nlist']}, R@10 {a['served_as_tuned']['ood']:.3f} on the text-like "
        f"queries, where nprobe={served['op']['param'] if served['op'] else 'n/a'} already reaches {0.95}; as tuned it "
        f"answers {a['batch_qps']['served@tuned']:,.0f} q/s (one timed call)"
        + (f", {a['batch_qps']['served@tuned'] / a['batch_qps'][a['best_peer']]:.2f}x the best peer's QPS at "
           f"R@10 >= 0.95." if "best_peer" in a else "."),
        "Index bytes: FAISS serialize_index / usearch serialized_length / hnswlib index_file_size (vectors and "
        "graph or lists; PinIndex's pin-id list is not counted). HNSW peers: M=16, construction ef 128; usearch "
        "stores our int8 codes and takes each query as int8 (<q, code> orders pins as <q, x_dq> does); hnswlib "
        "stores the dequantized float32 vectors.",
    ]
    if a["missing_peers"]:
        out.append(f"Not installed, so not compared: {', '.join(a['missing_peers'])} (pip install '.[bench]').")
    for c in a["contenders"].values():
        if c["n"] < f["n"]:
            out.append(f"{c['name']} was measured on the first {c['n']:,} vectors (its build reached its time budget "
                       f"after {c['build_s']:.0f} s), against exact search over those vectors.")
    out += [
        f"Build = PinIndex.build (dequantize, k-means on {64 * p['nlist']:,} points, add, nprobe tuning with "
        f"{p.get('tune_queries')} queries: stored vectors and {p.get('tune_off_index_queries')} drawn apart from "
        "the measured queries); the plain FAISS build has no tuning. RSS growth of the build, Python id "
        f"list and id map included: {f['rss_delta_mb']:,.0f} MiB (codes: {f['raw_code_bytes'] / 2**20:,.0f} MiB; "
        f"FAISS index: {f['faiss_index_bytes'] / 2**20:,.0f} MiB).",
        f"FAISS HNSW-SQ8 on {h['n']:,} vectors adds {h['memory_ratio'] - 1:.2f}x the codes in graph links; its "
        f"efSearch tuning reached recall {h['params'].get('tuned_recall_at_10')} on the tuning queries.",
    ]
    if "skipped" in demo:
        out.append(f"Demo: not measured ({demo['skipped']}).")
    else:
        src = ", ".join(f"{v:,} {k}" for k, v in demo["query_sources"].items())
        out.append(
            f"Demo: {demo['n']:,} pin vectors of model {demo['model_version']} under {demo['queries']:,} text queries "
            f"({src}) embedded with the queries tag in {demo['embed_s']:.1f} s. At this size `pinclip index build` "
            f"picks kind \"{demo['default_kind']}\" (exact below {demo['flat_max']:,} vectors), so the served demo "
            f"has no nprobe and R@10 = 1; built as IVF it gets nlist={demo['params']['nlist']}, nprobe="
            f"{demo['params']['nprobe']} (tuned), R@10 {demo['recall_as_built']:.3f} on the text queries.")
    return out


def report(f: dict) -> BenchResult:
    """Targets, tables and notes from the figures of `run`."""
    result = BenchResult("search_scale", f"Search at scale ({f['n']:,} int8 vectors, 256-d, overlapping clusters)",
                         figures=f)
    result.targets = ann_targets(f, f["demo"]) + [
        Target("in-process p99, k=10 (served nprobe)", f"<= {TARGETS['p99_ms']:g} ms", f"{f['inproc_p99_ms']:.2f} ms",
               f["inproc_p99_ms"] <= TARGETS["p99_ms"]),
        Target("HTTP overhead at p50", f"<= {TARGETS['http_ms']:g} ms", f"{f['http_overhead_ms']:.2f} ms",
               f["http_overhead_ms"] <= TARGETS["http_ms"]) if f["http_error"] is None else
        Target("HTTP overhead at p50", f"<= {TARGETS['http_ms']:g} ms", f"not measured: {f['http_error']}", None),
        Target("FAISS index memory / raw int8 codes", f"<= {TARGETS['memory']}x", f"{f['memory_ratio']:.3f}x",
               f["memory_ratio"] <= TARGETS["memory"]),
    ]
    result.table = ann_table(f)
    result.notes = notes(f)
    result.markdown = ["Single-query latency of the served index (text-like queries):", "",
                       *markdown_table(latency_table(f)), "", *curves_markdown(f)]
    return result


def run(ctx: BenchContext) -> BenchResult:
    from pinclip.quant import dequantize

    n, n_queries, n_hnsw = (20_000, 100, 5_000) if ctx.quick else (1_000_000, 1000, 100_000)
    budgets, chunk = ({"usearch": 60.0, "hnswlib": 0.0}, n // 2) if ctx.quick else \
        ({"usearch": 240.0, "hnswlib": 200.0}, 50_000)
    mixture = LowRankMixture()
    codes, quant = make_codes(mixture.base, n, seed=1)
    vectors = dequantize(codes, quant)  # (N, D): what the codes decode to, the truth's corpus
    rng = np.random.default_rng(2)
    queries = {"ood": mixture.queries(n_queries, rng), "in": mixture.base(n_queries, rng)}
    truth = {name: exact_truth(q, vectors) for name, q in queries.items()}
    tune = mixture.queries(2 * n_queries, np.random.default_rng(3))  # like the pins' own texts, never measured
    figures, index = measure_ivf(ctx, codes, quant, queries["ood"], truth["ood"][1], tune)
    figures["ann"] = measure_ann(index, figures["build_s"], figures["rss_delta_mb"], codes, vectors,
                                 {name: (q, truth[name][1]) for name, q in queries.items()},
                                 lambda rows, q: exact_truth(q, vectors[:rows])[1], THREADS, budgets, chunk,
                                 single=200 if not ctx.quick else 50)
    del index
    gc.collect()
    figures["raw_faiss_build_s"] = raw_faiss_build_s(codes, quant, figures["params"]["nlist"], seed=0)
    figures["hnsw_subset"] = hnsw_subset(codes, quant, queries["ood"][:200],
                                         exact_truth(queries["ood"][:200], vectors[:n_hnsw])[1], n_hnsw)
    figures["flat_scan_p50_ms"] = flat_scan_p50_ms(codes, quant, queries["ood"][:50])
    figures["demo"] = demo_cross_modal(ctx.demo_run, 50 if ctx.quick else 1000, THREADS)
    figures["control"] = control_stats(10_000 if ctx.quick else 100_000, n_queries)
    figures["stats"] = data_stats(mixture, vectors, queries, truth, figures["demo"], figures["control"])
    return report(figures)
