"""How much of each held-out board the training graph can still reach through the boards it keeps.

    pinclip data split --pins pins.parquet --boards boards.parquet --out splits.json   # prints the summary
    per_board = board_reachability(edges, splits); print(reachability_line(reachability_summary(per_board)))

A held-out board is removed from the training graph, but its pins may also sit together in kept boards
(a curated folder and a keyword board over the same drawings). The neighbor loss then pulls them
together anyway, and Related Pins and Search on that board partly measure what training saw. For each
held-out board, over its training pins (the only ones in the training graph), `pair_share` is the share
of its member pairs that share a kept training board, and `pin_share` the share of its training pins
that share a kept training board with another of its members. A board with fewer than two training
pins has no pair and counts in neither mean.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import sparse

WARN_MEAN = 0.5  # a mean pair share above this: `pinclip data split` warns


def _training_incidence(edges: list[tuple[str, str]], splits: dict) -> tuple[sparse.csr_matrix, dict[str, int]]:
    """(pins × kept boards) 0/1 matrix of the training graph's edges, and each training pin's row."""
    held_pins = set(splits.get("cold_start_pins") or []) | set(splits.get("val_pins") or [])
    held_boards = set(splits.get("heldout_boards") or [])
    kept = [(p, b) for p, b in edges if p not in held_pins and b not in held_boards]
    rows = {p: i for i, p in enumerate(sorted({p for p, _ in edges} - held_pins))}
    cols = {b: j for j, b in enumerate(sorted({b for _, b in kept}))}
    pairs = sorted({(rows[p], cols[b]) for p, b in kept})
    data = np.ones(len(pairs), np.float32)
    r = np.array([i for i, _ in pairs], np.int64)
    c = np.array([j for _, j in pairs], np.int64)
    return sparse.csr_matrix((data, (r, c)), shape=(len(rows), max(len(cols), 1))), rows


def board_reachability(edges: Iterable[tuple[str, str]], splits: dict) -> dict[str, dict[str, Any]]:
    """Per held-out board: its training pins, pairs, pairs sharing a kept board, pair_share and pin_share (None
    without a pair)."""
    edges = list(edges)
    incidence, rows = _training_incidence(edges, splits)
    members: dict[str, set[str]] = {b: set() for b in splits.get("heldout_boards") or []}
    for pin, board in edges:
        if board in members and pin in rows:
            members[board].add(pin)
    out: dict[str, dict[str, Any]] = {}
    for board, pins in sorted(members.items()):
        idx = np.array(sorted(rows[p] for p in pins), np.int64)
        m = len(idx)
        shared = (incidence[idx] @ incidence[idx].T).toarray() > 0 if m else np.zeros((0, 0), bool)  # (m, m)
        np.fill_diagonal(shared, False)
        pairs, reachable = m * (m - 1) // 2, int(shared.sum()) // 2
        out[board] = {"pins": m, "pairs": pairs, "reachable_pairs": reachable,
                      "pair_share": reachable / pairs if pairs else None,
                      "pin_share": float(shared.any(1).mean()) if pairs else None}
    return out


def reachability_summary(per_board: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{"boards", "mean", "max", "above_half", "mean_pin_share"} over the boards with a pair."""
    shares = [b["pair_share"] for b in per_board.values() if b["pair_share"] is not None]
    pins = [b["pin_share"] for b in per_board.values() if b["pin_share"] is not None]
    return {"boards": len(shares), "mean": float(np.mean(shares)) if shares else None,
            "max": float(np.max(shares)) if shares else None, "above_half": int(sum(s > 0.5 for s in shares)),
            "mean_pin_share": float(np.mean(pins)) if pins else None}


def reachability_line(summary: dict[str, Any]) -> str:
    """The audit line of `pinclip data split`, with a warning when held-out boards are mostly reachable."""
    if not summary["boards"]:
        return "board reachability: no held-out board has two training pins"
    line = (f"board reachability: of the member pairs of {summary['boards']} held-out boards, a mean of "
            f"{100 * summary['mean']:.1f}% share a kept training board (max {100 * summary['max']:.1f}%, "
            f"{summary['above_half']} boards above 50%); {100 * summary['mean_pin_share']:.1f}% of their training "
            "pins share one with another member")
    if summary["mean"] > WARN_MEAN:
        line += ("\nwarning: held-out boards are mostly reachable through kept boards, so Related Pins and Search "
                 "on them partly measure what training saw; hold out boards of other kinds (--heldout-kinds)")
    return line
