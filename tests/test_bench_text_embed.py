"""The text benchmark's bookkeeping: which peer path is the reference, same-round ratios, recall kept."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.text_embed import path_figures  # noqa: E402


def _vectors(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Titles (n, 8) and keywords close to them: each title's own keywords are its nearest."""
    rng = np.random.default_rng(seed)
    keywords = rng.standard_normal((n, 8)).astype(np.float32)
    return keywords + noise * rng.standard_normal((n, 8)).astype(np.float32), keywords


def test_fastest_peer_is_the_reference_and_ratios_pair_rounds():
    times = {"st-torch-fp32": [4.0, 4.0, 4.0], "st-fast": [2.0, 1.0, 3.0],  # peer: median 2.0 s
             "reference": [8.0, 8.0, 8.0], "ours-fast": [1.0, 1.0, 1.0]}
    exact = _vectors(30, 0.0, 0)
    vectors = {name: exact for name in times}
    vectors["ours-fast"] = (np.roll(exact[0], 1, axis=0), exact[1])  # every title points at another pin
    figures, best_peer = path_figures(times, vectors, ["reference", "ours-fast"], n_texts=100)
    assert best_peer == "st-fast"
    assert figures["ours-fast"]["vs_fastest_peer"] == pytest.approx(2.0)  # median of 2/1, 1/1, 3/1
    assert figures["reference"]["vs_fastest_peer"] == pytest.approx(0.25)  # median of 2/8, 1/8, 3/8
    assert figures["st-fast"]["texts_per_s"] == pytest.approx(50.0)
    assert figures["reference"]["recall@10"] == 1.0 and figures["ours-fast"]["retention"] < 0.5
    assert figures["st-fast"]["retention"] == 1.0  # the peer's paths against its torch path
