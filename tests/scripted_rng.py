"""A stand-in for np.random.Generator with scripted draws, to put a draw exactly on a threshold."""

from __future__ import annotations

import numpy as np


class ScriptedRng:
    """Each `random(size)` returns the next scripted array of draws (its shape must be `size`)."""

    def __init__(self, *draws):
        self.draws = [np.asarray(d, dtype=np.float64) for d in draws]

    def random(self, size):
        values = self.draws.pop(0)
        assert values.shape == np.empty(size).shape, f"asked for {size} draws, scripted {values.shape}"
        return values
