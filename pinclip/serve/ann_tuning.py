"""Search-parameter tuning of an ANN index against exact search: efSearch (HNSW) and nprobe (IVF).

Used by `PinIndex.build` (pinclip index build); `exact_top_k` and `recall_at_k` are also the
reference that tests and the Milvus recall measurement compare ANN results with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EF_SEARCH_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def exact_top_k(queries: np.ndarray, base: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Ids (Q, k) of the k largest inner products, brute force; exclude[q] is left out of row q."""
    top = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):
        scores = queries[start : start + 256] @ base.T  # (q, N)
        if exclude is not None:
            scores[np.arange(len(scores)), exclude[start : start + 256]] = -np.inf
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (q, k), unordered
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        top[start : start + 256] = np.take_along_axis(part, order, axis=1)
    return top


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (ids (Q, k) each)."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def _ann_top_k(index: Any, queries: np.ndarray, k: int, self_ids: np.ndarray | None = None) -> np.ndarray:
    """ANN ids (Q, k); self_ids[q] (the query's own row) is dropped from row q."""
    _, ids = index.search(queries, k + 1)  # (Q, k + 1)
    if self_ids is None:
        return ids[:, :k]
    return np.stack([[i for i in row if i != s][:k] for row, s in zip(ids.tolist(), self_ids)])


def tune_search(index: Any, kind: str, vectors: np.ndarray, config: Any, k: int = 10,
                queries: np.ndarray | None = None) -> dict[str, Any]:
    """Smallest efSearch (HNSW) / nprobe (IVF) whose recall@k vs exact search reaches the target.

    `config` (an IndexConfig) gives target_recall, tune_queries and seed. Two query sets must both
    reach the target: stored vectors with themselves excluded (related pins) and off-index queries:
    a sample of `queries` (the same pins' text and image embeddings: what a text or image search
    sends) or, without them, random unit directions, a harder stand-in that lies off every pin and
    so asks for more lists or a wider beam than real queries need.
    """
    if kind == "flat" or len(vectors) <= k + 1:
        return {}
    rng = np.random.default_rng(config.seed)
    sample = rng.choice(len(vectors), size=min(config.tune_queries, len(vectors)), replace=False)
    if queries is not None and len(queries):
        off = np.asarray(queries, dtype=np.float32)[rng.choice(len(queries), size=min(config.tune_queries, len(queries)),
                                                               replace=False)]  # (Q, D)
        off_kind = "text and image embeddings"
    else:
        off = rng.standard_normal((len(sample), vectors.shape[1])).astype(np.float32)  # (Q, D)
        off_kind = "random directions"
    off /= np.maximum(np.linalg.norm(off, axis=1, keepdims=True), 1e-12)
    truth_stored = exact_top_k(vectors[sample], vectors, k, exclude=sample)  # (Q, k)
    truth_off = exact_top_k(off, vectors, k)  # (Q, k)
    if kind == "hnsw":
        name, steps = "ef_search", EF_SEARCH_STEPS
    else:
        name, steps = "nprobe", tuple(sorted({min(v, index.nlist) for v in NPROBE_STEPS}))
    recall = 0.0
    for value in steps:
        set_search_param(index, kind, value)
        recall = min(recall_at_k(_ann_top_k(index, vectors[sample], k, sample), truth_stored),
                     recall_at_k(_ann_top_k(index, off, k), truth_off))
        if recall >= config.target_recall:
            break
    return {name: value, f"tuned_recall_at_{k}": round(recall, 4), "tune_queries": len(sample) + len(off),
            "tune_off_index_queries": off_kind}


def set_search_param(index: Any, kind: str, value: int) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = int(value)
    elif kind == "ivf":
        index.nprobe = int(value)
