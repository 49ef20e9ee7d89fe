"""Synthetic embeddings for the ANN benchmark: a low-rank Gaussian mixture with overlapping clusters,
and out-of-distribution queries shaped like text queries against image-heavy pins.

Used by bench/search_scale.py. Base vectors (pins):

    z = c_k + s_k · w            c_k ~ N(0, Λ) one of K centers (Zipf(0.7) weights), w ~ N(0, Λ),
                                 Λ_i ∝ i^-0.7 over a 128-d latent space, s_k = 0.4 · exp(0.5 · N(0, 1))
    x = normalize(m · u + B z + σ · g / √D)      u, B orthonormal in R^D; m = 0.3; σ = 0.4; g ~ N(0, I)

so within-cluster spread is a sizable fraction of the distance between centers (clusters overlap;
their variances differ) and the vectors share a mean direction, as trained towers' outputs do.
Queries come from another distribution: their mean direction is opposite (−0.25 · u, the gap
between a text tower's and an image tower's cones), half of them blend two clusters' centers
(mixed directions, which split a query's top-10 over several clusters).
At the demo's size (8,202 vectors) the statistics of `embedding_stats` come out close to those of
the demo's pin vectors under its text queries (the report prints both).
"""

from __future__ import annotations

import numpy as np

DIM, RANK, CLUSTERS = 256, 128, 1000


class LowRankMixture:
    """Pins (`base`) and text-like queries (`queries`) from one latent mixture, L2-normalized."""

    def __init__(self, dim: int = DIM, rank: int = RANK, clusters: int = CLUSTERS, seed: int = 0,
                 decay: float = 0.7, within: float = 0.4, noise: float = 0.4, mean: float = 0.3) -> None:
        rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(rng.standard_normal((dim, rank + 1)))  # (D, r + 1), orthonormal columns
        self.mean_dir, self.basis = basis[:, 0].astype(np.float32), basis[:, 1:].T.astype(np.float32)  # (D,), (r, D)
        variances = np.arange(1, rank + 1) ** -decay
        self.scale = np.sqrt(variances / variances.sum()).astype(np.float32)  # (r,)
        self.centers = (rng.standard_normal((clusters, rank)) * self.scale).astype(np.float32)  # (K, r)
        self.spread = (within * np.exp(0.5 * rng.standard_normal(clusters))).astype(np.float32)  # (K,)
        weights = 1.0 / np.arange(1, clusters + 1) ** 0.7
        self.weights, self.noise, self.mean, self.dim = weights / weights.sum(), noise, mean, dim

    def _emit(self, z: np.ndarray, mean: float, rng: np.random.Generator) -> np.ndarray:
        """Unit vectors (n, D) from latents z (n, r)."""
        g = rng.standard_normal((len(z), self.dim)).astype(np.float32)  # (n, D)
        x = mean * self.mean_dir + z @ self.basis + self.noise * g / np.sqrt(self.dim)  # (n, r) @ (r, D)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def _latents(self, which: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Latents (n, r): cluster centers[which] plus the cluster's own spread."""
        w = rng.standard_normal((len(which), len(self.scale))).astype(np.float32) * self.scale  # (n, r)
        return self.centers[which] + self.spread[which, None] * w

    def base(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, D) float32 pin vectors."""
        return self._emit(self._latents(rng.choice(len(self.centers), n, p=self.weights), rng), self.mean, rng)

    def queries(self, n: int, rng: np.random.Generator, gap: float = -0.25, blended: float = 0.5) -> np.ndarray:
        """(n, D) float32 queries: opposite mean direction, a `blended` share mixing two clusters."""
        pairs = rng.choice(len(self.centers), (n, 2), p=self.weights)  # (n, 2)
        t = np.where(rng.random(n) < blended, rng.random(n), 0.0).astype(np.float32)[:, None]  # (n, 1)
        z = self._latents(pairs[:, 0], rng) + t * (self.centers[pairs[:, 1]] - self.centers[pairs[:, 0]])
        return self._emit(z, gap, rng)


def embedding_stats(base: np.ndarray, queries: np.ndarray, top_scores: np.ndarray, sample: int = 20_000,
                    seed: int = 0) -> dict[str, float]:
    """How a query set sits against a base (unit vectors): the figures that make ANN easy or hard.

    top_scores (Q, k): each query's exact top-k scores, best first. mean_norm_base / mean_norm_query:
    length of the mean vector (1 = all alike, 0 = isotropic); mean_cos: cosine between the two means
    (negative: a modality gap); base_pair_cos: mean cosine of base pairs; effective_dim:
    participation ratio of the base covariance's eigenvalues; top1 / top10: mean score of the 1st
    and k-th neighbour; contrast: (k-th score − mean score) / score std per query, averaged (low:
    the top-k barely stands out from the rest, hard for any ANN). Means and covariance come from a
    `sample` of the base, base pairs from 2,000 of them.
    """
    rng = np.random.default_rng(seed)
    b = base[np.sort(rng.choice(len(base), min(sample, len(base)), replace=False))].astype(np.float64)  # (S, D)
    mb, mq = b.mean(axis=0), queries.mean(axis=0)  # (D,)
    cov = np.cov(b.T)  # (D, D)
    eig = np.linalg.eigvalsh(cov)  # (D,)
    pairs = b[:2000] @ b[:2000].T  # (P, P)
    score_mean = queries @ mb  # (Q,): mean over the base of q·x
    score_std = np.sqrt(np.einsum("qd,de,qe->q", queries, cov, queries))  # (Q,)
    return {
        "mean_norm_base": float(np.linalg.norm(mb)), "mean_norm_query": float(np.linalg.norm(mq)),
        "mean_cos": float(mb @ mq / (np.linalg.norm(mb) * np.linalg.norm(mq))),
        "base_pair_cos": float((pairs.sum() - np.trace(pairs)) / (len(pairs) * (len(pairs) - 1))),
        "effective_dim": float(eig.sum() ** 2 / (eig**2).sum()),
        "top1": float(top_scores[:, 0].mean()), "top10": float(top_scores[:, -1].mean()),
        "contrast": float(np.mean((top_scores[:, -1] - score_mean) / score_std)),
    }
