"""Retrieval metrics: exact top-k search, and per-query and mean metrics over (queries, corpus, relevant).

Recall@K is true recall, |relevant ∩ top-K| / |relevant|, so a query with more relevant items than
K cannot reach 1: its ceiling is min(K, |relevant|) / |relevant| (`ceiling@K`, reported beside it).
hit@K is 1 when at least one relevant item is in the top K. nDCG@10 uses binary gains,
sum over ranks i <= 10 of rel_i / log2(i + 1), divided by its best possible value. MRR is the
reciprocal rank of the first relevant item within the ranked depth (0 when none is there), i.e.
MRR@depth. Queries without relevant items are left out and counted. Scores are inner products
(embeddings are L2-normalized upstream); results are ordered by score, then by corpus id.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 10, 50, 100)


def _merge_topk(
    best_scores: np.ndarray, best_ids: np.ndarray, scores: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k highest of two candidate sets per row, sorted by (score desc, id asc)."""
    all_scores = np.concatenate([best_scores, scores], axis=1)  # (q, k + c)
    all_ids = np.concatenate([best_ids, ids], axis=1)  # (q, k + c)
    if all_scores.shape[1] > k:
        keep = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]  # (q, k)
        all_scores = np.take_along_axis(all_scores, keep, axis=1)
        all_ids = np.take_along_axis(all_ids, keep, axis=1)
    order = np.lexsort((all_ids, -all_scores), axis=1)  # last key is primary
    return np.take_along_axis(all_scores, order, axis=1), np.take_along_axis(all_ids, order, axis=1)


def exact_topk(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    exclude: np.ndarray | None = None,
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product: scores (Q, k) float32 and corpus ids (Q, k) int64.

    exclude: corpus indices per query that may not be returned: a (Q,) array with one index per
    query (the query itself in pin→pin search; a negative entry excludes nothing), or a list of Q
    arrays of any length (a query's duplicates, relevant items of another split). Where fewer than k corpus items are
    eligible the row is padded with id -1 and score -inf. Queries and corpus are processed in
    blocks of `chunk` rows, so memory stays at chunk² scores.
    """
    queries = np.asarray(queries, dtype=np.float32)
    corpus = np.asarray(corpus, dtype=np.float32)
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"queries and corpus must be (Q, D) and (N, D), got {queries.shape} and {corpus.shape}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not (np.isfinite(queries).all() and np.isfinite(corpus).all()):
        raise ValueError("queries or corpus contain NaN or infinite values")
    n_queries = queries.shape[0]
    ex_rows, ex_cols = _exclusion_pairs(exclude, n_queries)
    out_scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    out_ids = np.full((n_queries, k), -1, dtype=np.int64)
    for q0 in range(0, n_queries, chunk):
        q1 = min(q0 + chunk, n_queries)
        best_s, best_i = out_scores[q0:q1], out_ids[q0:q1]
        for c0 in range(0, corpus.shape[0], chunk):
            c1 = min(c0 + chunk, corpus.shape[0])
            scores = queries[q0:q1] @ corpus[c0:c1].T  # (q, c)
            hit = (ex_rows >= q0) & (ex_rows < q1) & (ex_cols >= c0) & (ex_cols < c1)
            scores[ex_rows[hit] - q0, ex_cols[hit] - c0] = -np.inf
            ids = np.broadcast_to(np.arange(c0, c1, dtype=np.int64), scores.shape)  # (q, c)
            best_s, best_i = _merge_topk(best_s, best_i, scores, ids, k)
        best_i = np.where(np.isneginf(best_s), -1, best_i)  # excluded or missing items are not results
        out_scores[q0:q1], out_ids[q0:q1] = best_s, best_i
    return out_scores, out_ids


def _exclusion_pairs(exclude, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the (query, corpus item) pairs to exclude; see `exact_topk`."""
    if exclude is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if isinstance(exclude, np.ndarray) and exclude.ndim == 1 and exclude.dtype != object:
        exclude = np.asarray(exclude, dtype=np.int64)
        if exclude.shape != (n_queries,):
            raise ValueError(f"exclude must have one entry per query ({n_queries}), got shape {exclude.shape}")
        keep = exclude >= 0
        return np.flatnonzero(keep), exclude[keep]
    if len(exclude) != n_queries:
        raise ValueError(f"exclude must have one entry per query ({n_queries}), got {len(exclude)}")
    arrays = [np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude]
    rows = np.repeat(np.arange(n_queries), [len(a) for a in arrays])
    cols = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
    return rows[cols >= 0], cols[cols >= 0]


def per_query_metrics(ids: np.ndarray, relevant: Sequence[np.ndarray], ks: Sequence[int] = (10, 100),
                      ndcg_k: int = 10) -> dict[str, np.ndarray]:
    """Per-query recall@k, ceiling@k and hit@k for k in ks, ndcg@ndcg_k and mrr: {name: (Q',) float64}
    over the Q' queries that have relevant items (their positions under "rows")."""
    ids = np.asarray(ids, dtype=np.int64)
    depth = ids.shape[1]
    if ids.ndim != 2 or len(relevant) != ids.shape[0]:
        raise ValueError(f"ids must be (Q, K) with one relevant set per query; got {ids.shape}, {len(relevant)}")
    if max([*ks, ndcg_k]) > depth:
        raise ValueError(f"k={max([*ks, ndcg_k])} is deeper than the {depth} ranked results per query")
    rel_sets = [np.unique(np.asarray(r, dtype=np.int64)) for r in relevant]
    rows = np.array([q for q, r in enumerate(rel_sets) if r.size], np.int64)
    hits = np.zeros((len(rows), depth), bool)  # (Q', K) relevant at rank j+1
    for i, q in enumerate(rows):
        hits[i] = np.isin(ids[q], rel_sets[q]) & (ids[q] >= 0)
    sizes = np.array([rel_sets[q].size for q in rows], np.float64)  # (Q',)
    found = np.cumsum(hits, axis=1)  # (Q', K)
    out: dict[str, np.ndarray] = {"rows": rows}
    for k in ks:
        out[f"recall@{k}"] = found[:, k - 1] / sizes
        out[f"ceiling@{k}"] = np.minimum(k, sizes) / sizes
        out[f"hit@{k}"] = (found[:, k - 1] > 0).astype(np.float64)
    discount = 1.0 / np.log2(np.arange(2, ndcg_k + 2))  # (k,)
    ideal = np.cumsum(discount)[np.minimum(sizes, ndcg_k).astype(int) - 1]  # (Q',)
    out[f"ndcg@{ndcg_k}"] = (hits[:, :ndcg_k] * discount).sum(1) / ideal
    first = np.where(hits.any(1), hits.argmax(1) + 1, np.inf)  # (Q',) rank of the first relevant item
    out["mrr"] = 1.0 / first
    return out


def recall_at_k(
    ids: np.ndarray, relevant: Sequence[np.ndarray], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float | int]:
    """Recall@k and hit@k for ranked ids (Q, K) against each query's relevant corpus indices.

    Returns {"recall@k": ..., "hit@k": ... for k in ks, "queries": scored queries,
    "queries_without_relevant": queries left out}. Every k must be <= K.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 2 or len(relevant) != ids.shape[0]:
        raise ValueError(
            f"ids must be (Q, K) with one relevant set per query; got {ids.shape}, {len(relevant)}"
        )
    too_deep = [k for k in ks if k > ids.shape[1] or k < 1]
    if too_deep:
        raise ValueError(f"k={too_deep} outside the {ids.shape[1]} ranked results per query")
    rel_sets = [np.unique(np.asarray(r, dtype=np.int64)) for r in relevant]
    scored = np.array([r.size > 0 for r in rel_sets], dtype=bool)  # (Q,)
    result: dict[str, float | int] = {
        "queries": int(scored.sum()),
        "queries_without_relevant": int((~scored).sum()),
    }
    if not scored.any():
        return result | {f"{m}@{k}": float("nan") for k in ks for m in ("recall", "hit")}
    rows = np.flatnonzero(scored)
    is_relevant = np.stack([np.isin(ids[q], rel_sets[q]) & (ids[q] >= 0) for q in rows])  # (Q', K)
    found = np.cumsum(is_relevant, axis=1)  # (Q', K) relevant items within the top j+1
    sizes = np.array([rel_sets[q].size for q in rows], dtype=np.float64)  # (Q',)
    for k in ks:
        result[f"recall@{k}"] = float(np.mean(found[:, k - 1] / sizes))
        result[f"hit@{k}"] = float(np.mean(found[:, k - 1] > 0))
    return result


def retrieval_metrics(
    queries: np.ndarray,
    corpus: np.ndarray,
    relevant: Sequence[np.ndarray],
    ks: Sequence[int] = DEFAULT_KS,
    exclude: np.ndarray | None = None,
) -> dict[str, float | int]:
    """Exact search of queries (Q, D) over corpus (N, D), scored by `recall_at_k` at each k in ks."""
    _, ids = exact_topk(queries, corpus, max(ks), exclude=exclude)
    return recall_at_k(ids, relevant, ks)
