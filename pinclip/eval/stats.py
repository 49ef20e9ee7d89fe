"""Uncertainty of retrieval metrics: bootstrap intervals over queries, paired model comparisons, seeds.

    lo, hi = bootstrap_ci(per_query_ndcg)                     # 95% percentile interval of the mean
    d = paired_difference(ours, theirs)                         # same queries, two models
    d["significant"]                                            # the interval of the difference excludes 0

A query set is a sample; a mean over it is an estimate. `bootstrap_ci` resamples the queries with
replacement `n_boot` times and reports the 2.5th and 97.5th percentiles of the resampled means (the
percentile bootstrap, Efron & Tibshirani 1993). `paired_difference` resamples the per-query
differences of two models on the same queries, so query difficulty shared by both cancels out; a
difference whose interval contains zero is "no difference", and so is any difference measured on
fewer than MIN_QUERIES queries (a bootstrap of a handful of queries understates the uncertainty). With several training seeds, the
per-query values are first averaged over seeds (so the interval is over queries of the seed-mean
model), and the spread over seeds is reported separately as the standard deviation of the seeds'
means (`seed_summary`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_BOOT = 1000
LEVEL = 0.95
MIN_QUERIES = 20  # fewer paired queries than this: no difference is called significant


def _resampled_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) means of `values` resampled with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))  # (n_boot, Q)
    return values[idx].mean(axis=1)


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_boot: int = N_BOOT, level: float = LEVEL,
                 seed: int = 0) -> tuple[float, float]:
    """(low, high) percentile-bootstrap interval of the mean of per-query values; (nan, nan) if empty."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    means = _resampled_means(values, n_boot, seed)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, n_boot: int = N_BOOT,
                      level: float = LEVEL, seed: int = 0) -> dict[str, float | bool]:
    """Mean of a - b over the same queries, its bootstrap interval, the relative gain and significance."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must cover the same queries, got {a.shape} and {b.shape}")
    lo, hi = bootstrap_ci(a - b, n_boot, level, seed)
    mean_b = float(b.mean()) if b.size else float("nan")
    diff = float((a - b).mean()) if a.size else float("nan")
    return {"diff": diff, "low": lo, "high": hi, "relative": diff / mean_b if mean_b else float("nan"),
            "queries": int(a.size), "significant": bool(a.size >= MIN_QUERIES and (lo > 0 or hi < 0))}


def seed_summary(per_seed: Sequence[np.ndarray], n_boot: int = N_BOOT, seed: int = 0) -> dict[str, float]:
    """Mean over queries of the seed-averaged values, its interval, and the std of the seeds' means."""
    stacked = np.stack([np.asarray(v, np.float64) for v in per_seed])  # (S, Q)
    mean = stacked.mean(axis=0)  # (Q,)
    lo, hi = bootstrap_ci(mean, n_boot, seed=seed)
    seed_means = stacked.mean(axis=1)  # (S,)
    return {"mean": float(mean.mean()) if mean.size else float("nan"), "low": lo, "high": hi,
            "seeds": len(per_seed), "seed_std": float(seed_means.std(ddof=1)) if len(per_seed) > 1 else 0.0}
