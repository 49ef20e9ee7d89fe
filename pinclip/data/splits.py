"""Train / validation / cold-start pins and held-out boards (the splits.json of schema.py).

    pinclip data split --pins pins.parquet --boards boards.parquet --out splits.json

Cold-start pins are drawn at random and held out entirely; validation pins likewise. A share of
the boards that have at least `min_board_pins` pins, of which at least `min_warm_pins` are training
pins, is held out whole: their edges leave the training graph and give the ground truth of the
Related Pins and Search tasks. The result depends only on the seed and the (sorted) inputs.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pinclip.cli import UserError

SPLIT_KEYS: tuple[str, ...] = ("cold_start_pins", "val_pins", "heldout_boards")


@dataclass
class SplitConfig:
    cold_frac: float = 0.1  # share of pins held out entirely (cold start)
    val_frac: float = 0.02  # share of pins held out for periodic validation
    heldout_board_frac: float = 0.15  # share of eligible boards held out of the training graph
    min_board_pins: int = 3  # a board needs this many pins to be eligible for holding out
    min_warm_pins: int = 2  # ... and this many of them must be training pins


def _check_fractions(config: SplitConfig) -> None:
    for name in ("cold_frac", "val_frac", "heldout_board_frac"):
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise UserError(f"{name} must be in [0, 1), got {value}")
    if config.cold_frac + config.val_frac >= 1.0:
        raise UserError(f"cold_frac + val_frac must be below 1, got {config.cold_frac + config.val_frac}")


def make_splits(
    pin_ids: Sequence[str],
    edges: Iterable[tuple[str, str]],
    seed: int = 0,
    cold_frac: float = 0.1,
    val_frac: float = 0.02,
    heldout_board_frac: float = 0.15,
) -> dict:
    """splits.json content for pins `pin_ids` and (pin_id, board_id) `edges`; lists are sorted."""
    config = SplitConfig(cold_frac, val_frac, heldout_board_frac)
    _check_fractions(config)
    rng = np.random.default_rng(seed)
    pins = sorted(set(pin_ids))
    order = rng.permutation(len(pins))
    n_cold, n_val = round(config.cold_frac * len(pins)), round(config.val_frac * len(pins))
    cold = {pins[i] for i in order[:n_cold]}
    val = {pins[i] for i in order[n_cold : n_cold + n_val]}
    members: dict[str, set[str]] = defaultdict(set)
    for pin_id, board_id in edges:
        members[board_id].add(pin_id)
    eligible = sorted(
        board_id
        for board_id, board_pins in members.items()
        if len(board_pins) >= config.min_board_pins and len(board_pins - cold - val) >= config.min_warm_pins
    )
    n_boards = round(config.heldout_board_frac * len(eligible))
    heldout = [eligible[i] for i in rng.permutation(len(eligible))[:n_boards]]
    return {
        "seed": int(seed),
        "cold_start_pins": sorted(cold),
        "val_pins": sorted(val),
        "heldout_boards": sorted(heldout),
    }


def training_edge_mask(edge_pins: Sequence[str], edge_boards: Sequence[str], splits: dict) -> np.ndarray:
    """(E,) bool: True for edges of the training graph (no held-out pin, no held-out board)."""
    held_pins = set(splits["cold_start_pins"]) | set(splits["val_pins"])
    held_boards = set(splits["heldout_boards"])
    return np.fromiter(
        (p not in held_pins and b not in held_boards for p, b in zip(edge_pins, edge_boards)),
        dtype=bool,
        count=len(edge_pins),
    )


def split_sizes(
    splits: dict, pin_ids: Sequence[str], edge_pins: Sequence[str], edge_boards: Sequence[str]
) -> str:
    """One line with the size of every part, for printing."""
    held = len(set(splits["cold_start_pins"]) | set(splits["val_pins"]))
    train_edges = int(training_edge_mask(edge_pins, edge_boards, splits).sum())
    boards = len(set(edge_boards))
    return (
        f"splits: {len(pin_ids) - held} train pins, {len(splits['val_pins'])} val pins, "
        f"{len(splits['cold_start_pins'])} cold-start pins; {len(splits['heldout_boards'])} of {boards} "
        f"boards held out; {train_edges} of {len(edge_pins)} edges in the training graph"
    )


def write_splits(splits: dict, path: str) -> None:
    """Write splits.json atomically (temp file in the same folder, then rename); stable bytes."""
    if os.path.isdir(path):
        raise UserError(f"--out {path} is a folder; give the file to write, e.g. {os.path.join(path, 'splits.json')}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the folder of {path}: {err.strerror}") from None
    text = json.dumps({"seed": splits["seed"], **{k: splits[k] for k in SPLIT_KEYS}}, indent=1) + "\n"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".splits-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_splits(path: str) -> dict:
    """Load and check a splits.json; UserError naming the file and the key when malformed."""
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as f:
            splits = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{name}: not valid JSON ({err})") from None
    if not isinstance(splits, dict):
        raise UserError(f"{name}: expected a JSON object")
    for key in SPLIT_KEYS:
        values = splits.get(key)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise UserError(f"{name}: key '{key}' must be a list of strings")
    splits.setdefault("seed", None)
    return splits
