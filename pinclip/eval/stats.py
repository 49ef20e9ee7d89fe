"""Uncertainty of retrieval metrics: hierarchical bootstrap over clusters of queries and seeds, paired
model comparisons, and the Holm correction over the cells of one comparison.

    lo, hi = bootstrap_ci(per_query_ndcg)                          # i.i.d. queries, one seed
    s = seed_summary([seed0, seed1, seed2], clusters=board_of_query)  # mean, interval, std of the seeds' means
    d = paired_difference(ours, theirs, clusters=board_of_query)   # (S, Q) or (Q,) each: same queries
    flags = holm_significant([d1, d2, d3])                         # one comparison's cells: one family

A query set is a sample; a mean over it is an estimate. Queries are not independent draws: the
Related Pins queries of one held-out board share their relevant pins, so they rise and fall together.
The bootstrap therefore resamples **clusters** (the held-out board of a Related Pins query, the board
that is a Search query, the query itself for PinText), and all the queries of a drawn cluster come
along. A trained model has several seeds; each replicate also draws the seeds with replacement and
averages the drawn seeds' cluster-weighted means (a hierarchical bootstrap: clusters, then seeds).
The interval is the 2.5th and 97.5th percentile of the replicates (percentile bootstrap, Efron &
Tibshirani 1993). With one cluster per query and one seed it is the ordinary bootstrap over queries.

`paired_difference` resamples both models with the **same** clusters and the same seed draws (a model
with one seed, such as frozen or bm25, is constant across seed draws), so query difficulty shared by
both cancels out. Its two-sided p-value is p = min(1, 2·min(share of replicates <= 0, share >= 0)).
`holm_significant` adjusts the p-values of a family (the cells of one comparison column of a table)
by Holm–Bonferroni; a difference is significant when its adjusted p is below 1 - LEVEL and it rests
on at least MIN_QUERIES queries (a bootstrap over a handful of queries understates the uncertainty).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_BOOT = 1000
LEVEL = 0.95
MIN_QUERIES = 20  # fewer paired queries than this: no difference is called significant

ArrayLike = Sequence[float] | np.ndarray


def _resampled_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) means of `values` resampled with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))  # (n_boot, Q)
    return values[idx].mean(axis=1)


def _interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(replicates, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_ci(values: ArrayLike, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """(low, high) percentile-bootstrap interval of the mean of i.i.d. per-query values; (nan, nan) if empty."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    return _interval(_resampled_means(values, n_boot, seed), level)


def _per_seed(values: ArrayLike) -> np.ndarray:
    """(S, Q) float array from per-query values of one seed (Q,) or of several (S, Q)."""
    values = np.asarray(values, np.float64)
    return values[None] if values.ndim == 1 else values


def cluster_weights(clusters: Sequence | np.ndarray | None, queries: int, n_boot: int,
                    rng: np.random.Generator) -> np.ndarray:
    """(n_boot, Q) how many times each query is drawn: its cluster's draw count, clusters drawn with replacement
    (each query its own cluster when `clusters` is None)."""
    if clusters is None:
        codes, n = np.arange(queries), queries
    else:
        _, codes = np.unique(np.asarray(clusters), return_inverse=True)
        n = int(codes.max()) + 1 if queries else 0
        if len(codes) != queries:
            raise ValueError(f"{len(codes)} cluster ids for {queries} queries")
    drawn = rng.integers(0, n, size=(n_boot, n))  # (n_boot, C) cluster draws
    counts = np.stack([np.bincount(row, minlength=n) for row in drawn])  # (n_boot, C)
    return counts[:, codes].astype(np.float64)  # (n_boot, Q)


def seed_draws(seeds: int, n_boot: int, rng: np.random.Generator, draw_as: int | None = None) -> np.ndarray:
    """(n_boot, S) how many times each seed is drawn, seeds drawn with replacement. Uniform numbers are drawn
    for `draw_as` seeds (default `seeds`) and mapped onto this model's seeds, so two models drawn from the
    same generator state with as many seeds get the same draws, and a one-seed model always draws seed 0."""
    slots = draw_as or seeds
    u = rng.random((n_boot, slots))  # (n_boot, slots)
    picked = np.minimum((u * seeds).astype(np.int64), seeds - 1)  # (n_boot, slots) seed index
    counts = np.stack([np.bincount(row, minlength=seeds) for row in picked])  # (n_boot, S)
    return counts / slots


def hierarchical_means(values: np.ndarray, weights: np.ndarray, seed_share: np.ndarray) -> np.ndarray:
    """(n_boot,) replicate means: per seed the cluster-weighted mean over queries, then the seed-draw-weighted
    mean over seeds. values (S, Q), weights (n_boot, Q), seed_share (n_boot, S), rows summing to 1."""
    per_seed = weights @ values.T / weights.sum(1, keepdims=True)  # (n_boot, S)
    return (per_seed * seed_share).sum(1)


def bootstrap_replicates(values: ArrayLike, clusters: Sequence | np.ndarray | None = None, n_boot: int = N_BOOT,
                         seed: int = 0) -> np.ndarray:
    """(n_boot,) hierarchical-bootstrap means of per-query values (Q,) or (S, Q): clusters, then seeds."""
    values = _per_seed(values)
    rng = np.random.default_rng(seed)
    weights = cluster_weights(clusters, values.shape[1], n_boot, rng)
    return hierarchical_means(values, weights, seed_draws(len(values), n_boot, rng))


def seed_summary(per_seed: Sequence[np.ndarray], n_boot: int = N_BOOT, seed: int = 0,
                 clusters: Sequence | np.ndarray | None = None) -> dict[str, float]:
    """Mean over queries of the seed-averaged values, its hierarchical-bootstrap interval, and the std of the
    seeds' means."""
    stacked = np.stack([np.asarray(v, np.float64) for v in per_seed])  # (S, Q)
    if stacked.shape[1] == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "seeds": len(per_seed),
                "seed_std": 0.0}
    lo, hi = _interval(bootstrap_replicates(stacked, clusters, n_boot, seed), LEVEL)
    seed_means = stacked.mean(axis=1)  # (S,)
    return {"mean": float(stacked.mean()), "low": lo, "high": hi, "seeds": len(per_seed),
            "seed_std": float(seed_means.std(ddof=1)) if len(per_seed) > 1 else 0.0}


def p_value(replicates: np.ndarray, tie: float = 1e-12) -> float:
    """Two-sided bootstrap p-value of "the difference is 0": min(1, 2·min(share <= 0, share >= 0)); a replicate
    within `tie` of 0 (rounding of equal means) counts as 0."""
    zero = np.abs(replicates) <= tie
    return float(min(1.0, 2 * min(np.mean((replicates <= 0) | zero), np.mean((replicates >= 0) | zero))))


def paired_difference(a: ArrayLike, b: ArrayLike, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0,
                      clusters: Sequence | np.ndarray | None = None) -> dict[str, float | bool]:
    """Mean of a - b over the same queries (each (Q,) or (seeds, Q)), its hierarchical-bootstrap interval and
    p-value, the relative gain and significance before any multiplicity correction."""
    a, b = _per_seed(a), _per_seed(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired values must cover the same queries, got {a.shape} and {b.shape}")
    queries = a.shape[1]
    mean_a, mean_b = (float(x.mean()) if queries else float("nan") for x in (a, b))
    diff = mean_a - mean_b
    if queries == 0:
        return {"diff": diff, "low": diff, "high": diff, "relative": float("nan"), "queries": 0, "p": 1.0,
                "significant": False}
    rng = np.random.default_rng(seed)
    weights = cluster_weights(clusters, queries, n_boot, rng)
    slots, state = max(len(a), len(b)), rng.bit_generator.state
    share_a = seed_draws(len(a), n_boot, rng, slots)
    rng.bit_generator.state = state  # the same uniform draws for both models' seeds
    share_b = seed_draws(len(b), n_boot, rng, slots)
    replicates = hierarchical_means(a, weights, share_a) - hierarchical_means(b, weights, share_b)  # (n_boot,)
    lo, hi = _interval(replicates, level)
    p = p_value(replicates)
    return {"diff": diff, "low": lo, "high": hi, "relative": diff / mean_b if mean_b else float("nan"),
            "queries": int(queries), "p": p, "significant": bool(queries >= MIN_QUERIES and p < 1 - level)}


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order: the i-th smallest of m is multiplied by
    m - i + 1 (i from 1), made non-decreasing in that order, and capped at 1."""
    p = np.asarray(p_values, np.float64)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (len(p) - np.arange(len(p)))  # (m,) p_(i) * (m - i + 1)
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def holm_significant(diffs: Sequence[dict], level: float = LEVEL) -> list[dict]:
    """The paired differences of one family with "p_holm" added and "significant" re-decided on it (Holm
    adjusted p below 1 - level, and at least MIN_QUERIES queries); the dicts are updated in place."""
    adjusted = holm([d["p"] for d in diffs]) if diffs else np.zeros(0)
    for d, p in zip(diffs, adjusted.tolist()):
        d["p_holm"] = p
        d["significant"] = bool(d["queries"] >= MIN_QUERIES and p < 1 - level)
    return list(diffs)
