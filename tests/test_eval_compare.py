"""pinclip.eval.compare: an ablation table of two hand-made evaluations, paired cell by cell."""

from __future__ import annotations

import numpy as np

from pinclip.eval.compare import ablation_table
from pinclip.eval.report import AGGREGATED, write_report

Q = 25
CLUSTERS = [f"B{i % 5}" for i in range(Q)]  # five held-out boards of five queries each


def evaluation(values: dict[tuple[str, str, str], float]) -> dict:
    """One seed of one model whose every per-query metric of a cell is the constant `values[cell]`."""
    out: dict = {"metrics": {}, "per_query": {}, "notes": {}, "meta": {"version": "v1"}}
    for (task, split, regime), v in values.items():
        out["metrics"].setdefault(task, {}).setdefault(split, {})[regime] = {
            "queries": Q, "corpus": 100, **{m: v for m in AGGREGATED}}
        out["per_query"].setdefault(task, {}).setdefault(split, {})[regime] = {
            **{m: np.full(Q, v) for m in AGGREGATED}, "ceiling@10": np.ones(Q), "ceiling@100": np.ones(Q),
            "query_ids": [f"q{i}" for i in range(Q)], "clusters": CLUSTERS}
    return out


def test_the_ablation_table_pairs_each_cell_and_ends_with_the_selection_score(tmp_path):
    """Related warm 0.5 -> 0.7 (+0.2 on every query: significant), Search cold 0.4 -> 0.4 (n.s.), warm PinText
    0.9 -> 1.0 (a training fit, left out of the selection score: 0.45 -> 0.55)."""
    cells = [("pintext_i2t", "warm", "full"), ("related", "warm", "full"), ("search", "cold", "full")]
    for name, values in (("ref", (0.9, 0.5, 0.4)), ("variant", (1.0, 0.7, 0.4))):
        write_report({"models": {"pinclip": [evaluation(dict(zip(cells, values)))]}, "partition": "val"},
                     tmp_path / name)
    table = ablation_table({"ref": tmp_path / "ref", "variant": tmp_path / "variant"}, reference="ref")
    header, _, ref, variant = table.splitlines()
    assert header == "| model | i2t warm (fit) full | rel warm full | srch cold full | selection score |"
    assert ref == "| ref | 0.900 | 0.500 | 0.400 | 0.450 |"
    assert variant == ("| variant | 1.000 (+0.100 [+0.100, +0.100]) | 0.700 (+0.200 [+0.200, +0.200]) | "
                       "0.400 (+0.000 [+0.000, +0.000] n.s.) | 0.550 |")


def test_rows_may_name_models_of_one_evaluation(tmp_path):
    cells = [("related", "warm", "full"), ("search", "cold", "full")]
    write_report({"models": {"pinclip": [evaluation(dict(zip(cells, (0.5, 0.4))))],
                             "lit": [evaluation(dict(zip(cells, (0.6, 0.4))))]}, "partition": "val"}, tmp_path / "both")
    table = ablation_table({"ours": (tmp_path / "both", "pinclip"), "lit": (tmp_path / "both", "lit")}, reference="ours")
    assert table.splitlines()[3] == ("| lit | 0.600 (+0.100 [+0.100, +0.100]) | 0.400 (+0.000 [+0.000, +0.000] n.s.) "
                                     "| 0.500 |")
