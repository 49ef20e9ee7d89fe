"""The served IVF-SQ8 index beside HNSW peers (hnswlib, usearch) on one query set: recall–parameter
curves, the smallest parameter reaching a recall, its QPS and the index's memory.

Used by bench/search_scale.py. Every contender answers k=10 by inner product over the same vectors:
  served   PinIndex (FAISS IVF-SQ8, our int8 codes), parameter nprobe, its FAISS index searched directly
           (PinIndex.search adds the pin-id lookup, measured apart in bench/search_scale.py)
  usearch  HNSW over the same int8 codes (dtype i8, metric ip; M=16, expansion_add=128), parameter
           expansion_search; a query is sent as int8 too (rounded at 127 / max|q|)
  hnswlib  HNSW over the dequantized float32 vectors (space ip; M=16, ef_construction=128), parameter ef
With int8 codes c = x_dq / s + z, <q, c> = <q, x_dq> / s + z·Σq: the same order for a query as the
exact inner products over the dequantized vectors that recall is measured against. Batch searches
use `threads` threads in every library; single-query searches use one.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.common import current_rss_mb
from pinclip.serve.ann_tuning import recall_at_k

HNSW_M, HNSW_EF_CONSTRUCTION = 16, 128
EF_STEPS = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass
class Contender:
    """One index under test: how to set its search parameter and search a batch of queries."""

    name: str
    param: str  # "nprobe", "ef", ...
    steps: tuple[int, ...]
    set_param: Callable[[int], None]
    search: Callable[[np.ndarray, int], np.ndarray]  # (queries (Q, D), threads) -> row ids (Q, 10)
    index_bytes: int
    build_s: float
    build_rss_mb: float  # resident memory the build added (index plus whatever the library keeps)
    n: int  # vectors indexed: rows [0, n) of the base


def set_faiss_threads(threads: int) -> None:
    import faiss

    faiss.omp_set_num_threads(threads)


def served_contender(index: Any, build_s: float, build_rss_mb: float) -> Contender:
    """A built IVF PinIndex, searched through its FAISS index (row ids, as the peers answer)."""
    import faiss

    def search(queries: np.ndarray, threads: int) -> np.ndarray:
        set_faiss_threads(threads)
        return index.faiss_index.search(queries, 10)[1]  # (Q, 10)

    def set_param(value: int) -> None:
        index.faiss_index.nprobe = int(value)

    steps = tuple(v for v in NPROBE_STEPS if v <= index.faiss_index.nlist)
    return Contender("served IVF-SQ8", "nprobe", steps, set_param, search,
                     len(faiss.serialize_index(index.faiss_index)), build_s, build_rss_mb, index.faiss_index.ntotal)


def symmetric_int8(queries: np.ndarray) -> np.ndarray:
    """Queries (Q, D) as int8, each scaled so its largest |component| is 127 (order of <q, ·> kept)."""
    peak = np.abs(queries).max(axis=1, keepdims=True)  # (Q, 1)
    return np.clip(np.rint(queries * (127.0 / np.maximum(peak, 1e-12))), -127, 127).astype(np.int8)


def add_within(add: Callable[[int, int], None], n: int, budget_s: float, chunk: int = 50_000) -> int:
    """add(lo, hi) over rows [0, n) in chunks until all are added or budget_s has passed (the first
    chunk always goes in); returns how many rows were added."""
    start, done = time.perf_counter(), 0
    while done < n and (done == 0 or time.perf_counter() - start < budget_s):
        add(done, min(n, done + chunk))
        done = min(n, done + chunk)
    return done


def usearch_contender(codes: np.ndarray, threads: int, budget_s: float = float("inf"), chunk: int = 50_000
                      ) -> Contender:
    """usearch HNSW over int8 codes (N, D), built with `threads` threads (rows that fit in budget_s)."""
    from usearch.index import Index

    gc.collect()
    rss0, start = current_rss_mb(), time.perf_counter()
    index = Index(ndim=codes.shape[1], metric="ip", dtype="i8", connectivity=HNSW_M,
                  expansion_add=HNSW_EF_CONSTRUCTION)

    def add(lo: int, hi: int) -> None:
        index.add(np.arange(lo, hi, dtype=np.uint64), np.ascontiguousarray(codes[lo:hi]), threads=threads)

    n = add_within(add, len(codes), budget_s, chunk)
    build_s, rss = time.perf_counter() - start, current_rss_mb() - rss0

    def search(queries: np.ndarray, threads: int) -> np.ndarray:
        keys = index.search(symmetric_int8(queries), 10, threads=threads).keys  # (Q, 10), or (10,) for Q = 1
        return keys.astype(np.int64).reshape(len(queries), -1)

    def set_param(value: int) -> None:
        index.expansion_search = int(value)

    return Contender("usearch HNSW int8", "expansion_search", EF_STEPS, set_param, search,
                     int(index.serialized_length), build_s, rss, n)


def hnswlib_contender(vectors: np.ndarray, threads: int, budget_s: float = float("inf"), chunk: int = 50_000
                      ) -> Contender:
    """hnswlib HNSW over float32 vectors (N, D), built with `threads` threads (rows that fit in budget_s)."""
    import hnswlib

    gc.collect()
    rss0, start = current_rss_mb(), time.perf_counter()
    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
    n = add_within(lambda lo, hi: index.add_items(vectors[lo:hi], np.arange(lo, hi), num_threads=threads),
                   len(vectors), budget_s, chunk)
    build_s, rss = time.perf_counter() - start, current_rss_mb() - rss0

    def search(queries: np.ndarray, threads: int) -> np.ndarray:
        return index.knn_query(queries, 10, num_threads=threads)[0].astype(np.int64)  # (Q, 10)

    return Contender("hnswlib HNSW float32", "ef", EF_STEPS, index.set_ef, search,
                     int(index.index_file_size()), build_s, rss, n)


def recall_of(contender: Contender, queries: np.ndarray, truth: np.ndarray, threads: int) -> float:
    """Recall@10 of the contender at its current parameter."""
    return recall_at_k(contender.search(queries, threads), truth)


def sweep(contender: Contender, queries: np.ndarray, truth: np.ndarray, threads: int,
          stop_recall: float = 0.99, max_call_s: float = 20.0) -> list[dict[str, float]]:
    """Recall@10 and batch QPS at each step of the contender's parameter, smallest first, until
    recall reaches stop_recall or one batch call takes over max_call_s."""
    curve = []
    for value in contender.steps:
        contender.set_param(value)
        start = time.perf_counter()
        found = contender.search(queries, threads)  # (Q, 10)
        seconds = time.perf_counter() - start
        curve.append({"param": value, "recall": recall_at_k(found, truth), "qps": len(queries) / seconds})
        if curve[-1]["recall"] >= stop_recall or seconds > max_call_s:
            break
    return curve


def operating_point(curve: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """The point of smallest parameter whose recall reaches target (None when none does)."""
    return next((p for p in sorted(curve, key=lambda p: p["param"]) if p["recall"] >= target), None)


def single_query_qps(contender: Contender, queries: np.ndarray) -> float:
    """Queries per second answering one query a call on one thread (after one warm-up call)."""
    contender.search(queries[:1], 1)
    start = time.perf_counter()
    for q in queries:
        contender.search(q[None, :], 1)
    return len(queries) / (time.perf_counter() - start)
