"""`pinclip mix`: the weight is chosen on validation by the selection score; the served model follows it."""

from __future__ import annotations

import json

import pytest

from pinclip.eval.mix_cli import choose_weight, served_checkpoint
from pinclip.eval.selection import selection_score


def test_choose_weight_takes_the_best_and_ties_go_to_the_smaller():
    assert choose_weight({0.0: 0.30, 0.25: 0.34, 0.5: 0.33}) == 0.25
    assert choose_weight({0.0: 0.30, 0.5: 0.30}) == 0.0
    with pytest.raises(ValueError):
        choose_weight({})


def test_the_selection_score_leaves_warm_pintext_out():
    cell = lambda v: {"ndcg@10": v}  # noqa: E731
    doc = {"models": {"m": {
        "pintext_i2t": {"warm": {"full": cell(0.9)}, "cold": {"full": cell(0.1)}},
        "related": {"warm": {"full": cell(0.5), "title": None}, "cold": {"image": cell(0.3)}},
        "search": {"cold": {"full": cell(0.2)}}}}}
    out = selection_score(doc, model="m")
    assert out["score"] == pytest.approx((0.1 + 0.5 + 0.3 + 0.2) / 4)
    assert "pintext_i2t/warm/full" not in out["cells"] and len(out["cells"]) == 4


def test_mix_chooses_on_validation_and_writes_the_served_model(tiny_run):
    from pinclip.cli import main
    from pinclip.models.embedder import Embedder

    assert main(["mix", "--run", str(tiny_run), "--weights", "0.5", "--quiet"]) == 0
    record = json.loads((tiny_run / "mix.json").read_text())
    assert set(record["scores"]) == {"0", "0.5"} and record["partition"] == "val"
    assert record["weight"] == choose_weight({float(w): s for w, s in record["scores"].items()})
    served = served_checkpoint(tiny_run)
    if record["weight"] > 0:
        assert served == tiny_run / "mixed" and Embedder.from_checkpoint(served).quant is not None
    else:
        assert served == tiny_run / "train" / "final"
