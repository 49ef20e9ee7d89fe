"""Graph smoothing of warm pins: the formula by hand, and cold cells left exactly as they were."""

from __future__ import annotations

import numpy as np
import pytest
from test_eval_harness import eval_splits

from pinclip.eval.harness import evaluate_checkpoint
from pinclip.eval.smooth import create_smoothed, smooth_pins
from pinclip.train.dataset import load_dataset


def test_smooth_pins_by_hand():
    pins = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    neighbors = np.array([[1, 2], [-1, -1], [0, -1]])
    out = smooth_pins(pins, neighbors, 0.5)
    first = np.array([1.0 + 0.5 * 0.3, 0.5 * 0.9])  # itself + 0.5 * mean of rows 1 and 2
    assert out[0] == pytest.approx(first / np.linalg.norm(first))
    assert out[1] == pytest.approx(pins[1])  # no neighbor: unchanged
    third = np.array([0.6 + 0.5, 0.8])
    assert out[2] == pytest.approx(third / np.linalg.norm(third))
    assert smooth_pins(pins, neighbors, 0.0) == pytest.approx(pins)


def test_smoothing_changes_no_cold_cell_and_no_pintext_cell(catalog, tiny_checkpoint, tmp_path):
    dataset = load_dataset(catalog["pins"], catalog["boards"], None)
    folder = create_smoothed(tiny_checkpoint, 1.0, tmp_path / "smoothed")
    kw = {"splits": eval_splits(), "progress": False, "quantization": False}
    smoothed, plain = evaluate_checkpoint(folder, dataset, **kw), evaluate_checkpoint(tiny_checkpoint, dataset, **kw)
    assert smoothed["meta"]["kind"] == "smoothed"
    changed = False
    for task, by_split in plain["per_query"].items():
        for split, by_regime in by_split.items():
            for regime, values in by_regime.items():
                same = np.allclose(smoothed["per_query"][task][split][regime]["ndcg@10"], values["ndcg@10"])
                if split == "cold" or task.startswith("pintext"):
                    assert same, (task, split, regime)
                changed |= not same
    assert changed  # warm pins of the synthetic catalog have walk neighbors: some warm cell moves
