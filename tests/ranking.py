"""Reference ranking for tests: a full sort in plain Python, and Recall@10, nDCG@10 and MRR from it."""

from __future__ import annotations

import numpy as np


def brute_force(queries: np.ndarray, corpus: np.ndarray, relevant: list[set[int]], exclude: list[set[int]]
                ) -> dict[str, list[float]]:
    """Recall@10, nDCG@10 and MRR per query by a full sort in plain Python."""
    out: dict[str, list[float]] = {"recall@10": [], "ndcg@10": [], "mrr": [], "top": []}
    for q, query in enumerate(queries):
        scores = corpus @ query
        ranking = [j for _, j in sorted((-scores[j], j) for j in range(len(corpus)) if j not in exclude[q])]
        hits = [j in relevant[q] for j in ranking]
        ideal = sum(1 / np.log2(i + 2) for i in range(min(10, len(relevant[q]))))
        out["recall@10"].append(sum(hits[:10]) / len(relevant[q]))
        out["ndcg@10"].append(sum(h / np.log2(i + 2) for i, h in enumerate(hits[:10])) / ideal)
        out["mrr"].append(1 / (hits.index(True) + 1) if True in hits[:100] else 0.0)
        out["top"].append(ranking[:10])
    return out
