"""pinclip.data.reachability: how much of each held-out board kept boards still join, on a hand-made graph."""

from __future__ import annotations

import pytest

from pinclip.data.reachability import board_reachability, reachability_line, reachability_summary

# Training pins p1..p5, cold pin c. Kept boards K1 {p1, p2, c} and K2 {p3, p4}. Held-out boards: H {p1, p2, p3, c}
# (pairs of its training pins: p1-p2 shares K1, p1-p3 and p2-p3 share nothing: 1 of 3), H2 {p4, p5} (0 of 1),
# H3 {p1, c} (one training pin: no pair; c is in no training board).
EDGES = [("p1", "K1"), ("p2", "K1"), ("c", "K1"), ("p3", "K2"), ("p4", "K2"),
         ("p1", "H"), ("p2", "H"), ("p3", "H"), ("c", "H"), ("p4", "H2"), ("p5", "H2"), ("p1", "H3"), ("c", "H3")]
SPLITS = {"cold_start_pins": ["c"], "val_pins": [], "heldout_boards": ["H", "H2", "H3"]}


def test_pair_and_pin_shares_by_hand():
    per_board = board_reachability(EDGES, SPLITS)
    assert per_board["H"] == {"pins": 3, "pairs": 3, "reachable_pairs": 1, "pair_share": pytest.approx(1 / 3),
                              "pin_share": pytest.approx(2 / 3)}  # p1 and p2 reach each other, p3 no one
    assert per_board["H2"]["pair_share"] == 0.0 and per_board["H2"]["pin_share"] == 0.0
    assert per_board["H3"] == {"pins": 1, "pairs": 0, "reachable_pairs": 0, "pair_share": None, "pin_share": None}
    summary = reachability_summary(per_board)
    assert summary == {"boards": 2, "mean": pytest.approx(1 / 6), "max": pytest.approx(1 / 3), "above_half": 0,
                       "mean_pin_share": pytest.approx(1 / 3)}
    line = reachability_line(summary)
    assert line.startswith("board reachability: of the member pairs of 2 held-out boards, a mean of 16.7%")
    assert "max 33.3%, 0 boards above 50%" in line and "warning" not in line


def test_a_held_out_board_inside_a_kept_board_is_fully_reachable_and_warns():
    splits = {**SPLITS, "heldout_boards": ["H", "H4"]}
    per_board = board_reachability([*EDGES, ("p1", "H4"), ("p2", "H4")], splits)  # H4 {p1, p2} lies inside K1
    assert per_board["H4"]["pair_share"] == 1.0
    summary = reachability_summary(per_board)
    assert summary["mean"] == pytest.approx((1 / 3 + 1) / 2) and summary["above_half"] == 1
    assert "\nwarning: held-out boards are mostly reachable" in reachability_line(summary)
    assert reachability_line(reachability_summary({})) == "board reachability: no held-out board has two training pins"
