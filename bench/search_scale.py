"""Search at scale: 1M synthetic 256-d int8 vectors in a PinIndex; build, memory, latency, recall.

    python bench/run.py --out bench --only search_scale [--quick]

Vectors: a Gaussian mixture on the unit sphere, 1,000 clusters with Zipf(0.7) weights, each point
normalize(center + 1.0 · g/√256) with g ~ N(0, I) (cosine to its center ≈ 0.7), stored as int8
with one global affine scale (pinclip.quant.fit_global_affine on a 20k sample). Queries: 1,000
held-out points of the same mixture. Measured:
  - IVF-SQ8 PinIndex (kind "ivf"; nlist = 4·√N, nprobe tuned by the index to recall@10 >= 0.95):
    build time, FAISS index bytes vs the raw codes, RSS growth, k=10 single-query latency
    in-process, Recall@10 against exact search over the dequantized vectors;
  - raw FAISS: the same index object's search called directly (wrapper overhead), and a plain
    IndexIVFScalarQuantizer with the same nlist built from scratch (build overhead);
  - HNSW-SQ8 (M=32) on a 100k subset (its bytes per vector do not depend on N) and an exact
    SQ8 scan, to show why IVF is the kind for this size;
  - the HTTP service (create_app with a stub embedder, uvicorn in a subprocess): /search/text
    latency; HTTP overhead = HTTP p50 - in-process p50.
"""

from __future__ import annotations

import gc
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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

DIM, CLUSTERS, SPREAD = 256, 1000, 1.0
TARGETS = {"recall": 0.95, "p99_ms": 10.0, "http_ms": 2.0, "memory": 1.3}


class SphereMixture:
    """Gaussian mixture on the unit sphere: centers uniform on the sphere, Zipf(0.7) cluster weights."""

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


def make_codes(mixture: SphereMixture, n: int, seed: int, chunk: int = 50_000):
    """(codes (n, D) int8, GlobalAffine) with the scale fitted on a 20k calibration sample."""
    from pinclip.quant import fit_global_affine, quantize

    rng = np.random.default_rng(seed)
    quant = fit_global_affine(mixture.sample(20_000, rng))
    codes = np.empty((n, mixture.dim), np.int8)
    for lo in range(0, n, chunk):
        codes[lo : lo + chunk] = quantize(mixture.sample(min(chunk, n - lo), rng), quant)
    return codes, quant


def single_query_ms(search, queries: np.ndarray) -> list[float]:
    """Milliseconds of search(q (1, D)) for each query, one at a time."""
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None, :])
        times.append((time.perf_counter() - start) * 1e3)
    return times


def exact_truth(codes: np.ndarray, quant, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top-k row ids (Q, k) over the dequantized vectors (pinclip.eval.metrics.exact_topk)."""
    from pinclip.eval.metrics import exact_topk
    from pinclip.quant import dequantize

    return exact_topk(queries, dequantize(codes, quant), k)[1]


def recall10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


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


def hnsw_subset(codes: np.ndarray, quant, queries: np.ndarray, n: int) -> dict:
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
            "recall@10": recall10(found, exact_truth(codes[:n], quant, queries)), "params": index.meta.params}


def flat_scan_p50_ms(codes: np.ndarray, quant, queries: np.ndarray) -> float:
    """p50 ms of an exact SQ8 scan (FAISS IndexScalarQuantizer) over all codes."""
    from pinclip.quant import dequantize, faiss_sq_index

    index = faiss_sq_index(quant, codes.shape[1], "flat")
    for lo in range(0, len(codes), 100_000):
        index.add(dequantize(codes[lo : lo + 100_000], quant))
    return median(single_query_ms(lambda q: index.search(q, 10), queries))


def measure_ivf(ctx: BenchContext, codes: np.ndarray, quant, queries: np.ndarray) -> dict:
    """Build the IVF PinIndex over all codes and measure it in-process, raw and over HTTP."""
    import faiss

    from pinclip.serve.index import IndexConfig, PinIndex

    pin_ids = [f"p{i:07d}" for i in range(len(codes))]
    gc.collect()
    rss0, start = current_rss_mb(), time.perf_counter()
    index = PinIndex.build(codes, pin_ids, quant, "bench-synthetic", config=IndexConfig(kind="ivf"))
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
        http_ms, hits = http_latencies_ms(Path(tmp), queries, len(queries))
    faiss_bytes = len(faiss.serialize_index(index.faiss_index))
    return {
        "n": len(codes), "queries": len(queries), "build_s": build_s, "rss_delta_mb": rss_delta,
        "faiss_index_bytes": faiss_bytes, "raw_code_bytes": int(codes.nbytes), "memory_ratio": faiss_bytes / codes.nbytes,
        "params": index.meta.params, "recall@10": recall10(found, exact_truth(codes, quant, queries)),
        "inproc_p50_ms": median(ours), "inproc_p99_ms": percentile(ours, 99),
        "raw_faiss_p50_ms": median(raw), "raw_faiss_p99_ms": percentile(raw, 99),
        "http_p50_ms": median(http_ms), "http_p99_ms": percentile(http_ms, 99), "http_hits": hits,
        "http_overhead_ms": median(http_ms) - median(ours),
    }


def report(f: dict, clusters: int) -> BenchResult:
    """Targets, the comparison table and notes from the figures of `run`."""
    result = BenchResult("search_scale", f"Search at scale ({f['n']:,} int8 vectors, 256-d)", figures=f)
    result.targets = [
        Target("Recall@10 vs exact (IVF-SQ8)", f">= {TARGETS['recall']}", f"{f['recall@10']:.3f}",
               f["recall@10"] >= TARGETS["recall"]),
        Target("in-process p99, k=10", f"<= {TARGETS['p99_ms']:g} ms", f"{f['inproc_p99_ms']:.2f} ms",
               f["inproc_p99_ms"] <= TARGETS["p99_ms"]),
        Target("HTTP overhead at p50", f"<= {TARGETS['http_ms']:g} ms", f"{f['http_overhead_ms']:.2f} ms",
               f["http_overhead_ms"] <= TARGETS["http_ms"]),
        Target("FAISS index memory / raw int8 codes", f"<= {TARGETS['memory']}x", f"{f['memory_ratio']:.3f}x",
               f["memory_ratio"] <= TARGETS["memory"]),
    ]
    p, h, n = f["params"], f["hnsw_subset"], f"{f['n']:,}"
    result.table = [
        {"index": f"IVF-SQ8 (ours, nlist={p['nlist']}, nprobe={p.get('nprobe')})", "N": n, "build (s)": fmt(f["build_s"]),
         "bytes / codes": fmt(f["memory_ratio"]), "p50 (ms)": fmt(f["inproc_p50_ms"]),
         "p99 (ms)": fmt(f["inproc_p99_ms"]), "R@10": fmt(f["recall@10"])},
        {"index": "same FAISS index, called directly", "N": n, "build (s)": fmt(f["raw_faiss_build_s"]) + " (plain IVF-SQ8)",
         "bytes / codes": fmt(f["memory_ratio"]), "p50 (ms)": fmt(f["raw_faiss_p50_ms"]),
         "p99 (ms)": fmt(f["raw_faiss_p99_ms"]), "R@10": fmt(f["recall@10"])},
        {"index": "HTTP /search/text (stub embedder)", "N": n, "p50 (ms)": fmt(f["http_p50_ms"]),
         "p99 (ms)": fmt(f["http_p99_ms"])},
        {"index": f"HNSW-SQ8 (M=32, efSearch={h['params'].get('ef_search')})", "N": f"{h['n']:,}",
         "build (s)": fmt(h["build_s"]), "bytes / codes": fmt(h["memory_ratio"]), "p50 (ms)": fmt(h["p50_ms"]),
         "R@10": fmt(h["recall@10"])},
        {"index": "exact SQ8 scan (flat)", "N": n, "bytes / codes": "~1", "p50 (ms)": fmt(f["flat_scan_p50_ms"]),
         "R@10": "1"},
    ]
    result.notes = [
        f"Data: Gaussian mixture on the sphere ({clusters} clusters, Zipf(0.7) weights, cosine to center ~0.7), "
        f"global affine int8; queries: {f['queries']} held-out points of the same mixture.",
        f"Build = PinIndex.build (dequantize, k-means on {64 * p['nlist']:,} points, add, nprobe tuning with "
        f"{p.get('tune_queries')} queries, half of them random directions, which set nprobe); the plain FAISS build "
        "has no tuning.",
        f"Wrapper overhead (PinIndex.search vs the FAISS call): {f['inproc_p50_ms'] - f['raw_faiss_p50_ms']:.3f} ms "
        f"at p50. RSS growth of the build, Python id list and id map included: {f['rss_delta_mb']:,.0f} MiB "
        f"(codes: {f['raw_code_bytes'] / 2**20:,.0f} MiB; FAISS index: {f['faiss_index_bytes'] / 2**20:,.0f} MiB).",
        f"HNSW adds {h['memory_ratio'] - 1:.2f}x the codes in graph links (over the memory target at any N); its "
        f"efSearch tuning reached recall {h['params'].get('tuned_recall_at_10')} on the tuning queries.",
    ]
    return result


def run(ctx: BenchContext) -> BenchResult:
    n, n_queries, n_hnsw = (20_000, 100, 5_000) if ctx.quick else (1_000_000, 1000, 100_000)
    clusters = 100 if ctx.quick else CLUSTERS
    mixture = SphereMixture(DIM, clusters, SPREAD)
    codes, quant = make_codes(mixture, n, seed=1)
    queries = mixture.sample(n_queries, np.random.default_rng(2))
    figures = measure_ivf(ctx, codes, quant, queries)
    figures["raw_faiss_build_s"] = raw_faiss_build_s(codes, quant, figures["params"]["nlist"], seed=0)
    figures["hnsw_subset"] = hnsw_subset(codes, quant, queries[:200], n_hnsw)
    figures["flat_scan_p50_ms"] = flat_scan_p50_ms(codes, quant, queries[:50])
    return report(figures, clusters)
