"""What the evaluation harness scores, as types: dense encoders, rankers and the vectors they give.

    from pinclip.eval.protocol import Encoder, Ranker, TaskVectors, unit

A dense encoder embeds the queries and corpus of a task (pinclip.eval.tasks.TaskSpec) into
`TaskVectors`, which the harness searches exactly; a ranker (BM25) returns ranked corpus positions
itself. The models (pinclip.eval.encoders, pinclip.baselines) depend on this module, and it on none
of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pinclip.eval.tasks import TaskSpec


@dataclass
class TaskVectors:
    """One task on one split in one regime, embedded: queries (Q, D) against corpus (N, D)."""

    queries: np.ndarray
    corpus: np.ndarray


class Encoder(Protocol):
    kind: str
    version: str
    dims: list[int]  # Matryoshka dims, largest first; [] = no prefixes
    quant: Any  # GlobalAffine from the checkpoint, or None (fitted on the eval corpus)
    notes: dict[str, str]  # task -> why it cannot be scored

    def prepare(self, pins: Any, cache_dir: str | Path | None, progress: bool) -> None: ...
    def vectors(self, spec: TaskSpec) -> TaskVectors | None: ...


class Ranker(Protocol):
    kind: str
    version: str
    notes: dict[str, str]

    def prepare(self, pins: Any, cache_dir: str | Path | None, progress: bool) -> None: ...
    def rank(self, spec: TaskSpec, depth: int) -> np.ndarray | None: ...  # (Q, depth) corpus positions


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero): (..., D) -> (..., D)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
