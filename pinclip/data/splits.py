"""Train / validation / cold-start pins and held-out boards (the splits.json of schema.py).

    pinclip data split --pins pins.parquet --boards boards.parquet --out splits.json \
        [--heldout-kinds category,subgroup] [--seed 0]

Pins are held out as whole duplicate groups (`pinclip.data.groups`: same `group_id`, same
normalized text, near-duplicate image), so no cold-start or validation pin has a twin in training.
Groups are visited in a seeded random order and each goes to the cold-start set, else to the
validation set, while it fits under that set's target size (`cold_frac`, `val_frac` of the pins).

A share `heldout_board_frac` of the eligible boards is removed whole from the training graph: a
board is eligible when its kind (the boards table's optional `board_kind` column) is one of
`heldout_kinds`, it has at least `min_board_pins` pins and at least `min_warm_pins` of them train.
Hold out only boards whose membership is not derived from pin text (curated collections,
categories): a board built from a keyword is found by string matching and measures nothing. So
without `heldout_kinds`, every kind but the text-defined ones (TEXT_DEFINED_KINDS: keyword, concept,
query, tag, annotation) may be held out; naming them in `heldout_kinds` is the only way to hold them out.

Held-out boards are the ground truth of Related Pins and Search (one query per test board and
split); a share `val_board_frac` of them (`val_boards`) is reserved for choosing settings, the rest
is test. A share alone gives a small catalog a handful of Search queries, too few to conclude
anything, so at least enough boards are held out for `min_test_boards` test boards, up to
`max_heldout_board_frac` of the eligible ones; `split_warnings` says when the catalog cannot give that.
The result depends only on the seed, the inputs (in any order) and the settings.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from pinclip.cli import UserError

SPLIT_KEYS: tuple[str, ...] = ("cold_start_pins", "val_pins", "heldout_boards")
TEXT_DEFINED_KINDS: frozenset[str] = frozenset({"keyword", "concept", "query", "tag", "annotation"})
OPTIONAL_KEYS: tuple[str, ...] = ("val_boards",)


@dataclass
class SplitConfig:
    cold_frac: float = 0.1  # share of pins held out entirely (cold start)
    val_frac: float = 0.05  # share of pins held out for choosing settings
    heldout_board_frac: float = 0.15  # share of eligible boards held out of the training graph
    val_board_frac: float = 0.25  # share of the held-out boards reserved for validation
    heldout_kinds: tuple[str, ...] | None = None  # board kinds that may be held out (None: all)
    min_board_pins: int = 3  # a board needs this many pins to be eligible for holding out
    min_warm_pins: int = 2  # ... and this many of them must be training pins
    min_test_boards: int = 30  # hold out at least enough boards for this many test boards (Search queries) ...
    max_heldout_board_frac: float = 0.4  # ... but never more than this share of the eligible boards for it


def _check(config: SplitConfig) -> None:
    for name in ("cold_frac", "val_frac", "heldout_board_frac", "val_board_frac", "max_heldout_board_frac"):
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise UserError(f"{name} must be in [0, 1), got {value}")
    if config.cold_frac + config.val_frac >= 1.0:
        raise UserError(f"cold_frac + val_frac must be below 1, got {config.cold_frac + config.val_frac}")


def held_out_groups(pins: list[str], groups: Mapping[str, object] | None, n_cold: int, n_val: int,
                    rng: np.random.Generator) -> tuple[set[str], set[str]]:
    """(cold, val) pin sets made of whole groups, each at most its target size."""
    members: dict[object, list[str]] = defaultdict(list)
    for pin in pins:  # sorted: group order below depends only on the input set
        members[groups.get(pin, ("pin", pin)) if groups else ("pin", pin)].append(pin)
    ordered = sorted(members.values())
    cold: set[str] = set()
    val: set[str] = set()
    for i in rng.permutation(len(ordered)):
        group = ordered[i]
        if len(cold) + len(group) <= n_cold:
            cold.update(group)
        elif len(val) + len(group) <= n_val:
            val.update(group)
        if len(cold) == n_cold and len(val) == n_val:
            break
    return cold, val


def eligible_boards(members: Mapping[str, set[str]], held: set[str], config: SplitConfig,
                    board_kinds: Mapping[str, str | None] | None) -> list[str]:
    """Sorted boards that may be held out (kind, size and training-pin count)."""
    kinds = set(config.heldout_kinds) if config.heldout_kinds is not None else None
    kind_of = board_kinds or {}
    return sorted(
        board for board, pins in members.items()
        if (kind_of.get(board) in kinds if kinds is not None else kind_of.get(board) not in TEXT_DEFINED_KINDS)
        and len(pins) >= config.min_board_pins and len(pins - held) >= config.min_warm_pins
    )


def heldout_board_count(eligible: int, config: SplitConfig) -> int:
    """Boards to hold out of `eligible`: the share `heldout_board_frac`, raised (up to
    `max_heldout_board_frac`) until `min_test_boards` of them are left after the validation share."""
    by_share = round(config.heldout_board_frac * eligible)
    if config.heldout_board_frac == 0:
        return 0
    wanted = math.ceil(config.min_test_boards / max(1.0 - config.val_board_frac, 1e-9))
    cap = math.floor(max(config.max_heldout_board_frac, config.heldout_board_frac) * eligible)
    return max(by_share, min(wanted, cap))


def split_warnings(splits: dict, board_kinds: Mapping[str, str | None] | None = None) -> list[str]:
    """What a user should know about a split: too few test boards for Search to conclude anything, and
    the text-defined board kinds held out (asked for) or kept in training (by default)."""
    config = splits.get("config") or {}
    test = len(partition_boards(splits, "test")) if splits["heldout_boards"] else 0
    wanted = int(config.get("min_test_boards", 30))
    warnings = []
    if test < wanted:
        warnings.append(
            f"only {test} held-out test boards (Search queries per split; {wanted} wanted): the catalog has too few "
            "eligible boards (>= 3 pins, 2 of them training pins, of a kind that may be held out); Search cells "
            "under 20 queries are never called significant. Add boards, or give --heldout-kinds / "
            "--heldout-board-frac")
    present = {k for k in (board_kinds or {}).values() if k}
    text_kinds = sorted(present & TEXT_DEFINED_KINDS)
    asked = config.get("heldout_kinds")
    if asked is None and text_kinds:
        warnings.append(f"boards of the text-defined kinds {', '.join(text_kinds)} are not held out (their "
                        "membership comes from pin text); name them in --heldout-kinds to hold them out anyway")
    elif asked and set(asked) & TEXT_DEFINED_KINDS:
        warnings.append(f"holding out text-defined board kinds {', '.join(sorted(set(asked) & TEXT_DEFINED_KINDS))} "
                        "as asked: their Search and Related Pins ground truth can be found by matching pin text")
    return warnings


def make_splits(
    pin_ids: Sequence[str],
    edges: Iterable[tuple[str, str]],
    seed: int = 0,
    cold_frac: float = 0.1,
    val_frac: float = 0.05,
    heldout_board_frac: float = 0.15,
    *,
    val_board_frac: float = 0.25,
    heldout_kinds: Collection[str] | None = None,
    groups: Mapping[str, object] | None = None,
    board_kinds: Mapping[str, str | None] | None = None,
    min_test_boards: int = 30,
) -> dict:
    """splits.json content for pins, (pin_id, board_id) edges, duplicate groups (pin_id -> group key)
    and board kinds (board_id -> kind); lists are sorted. See the module docstring."""
    config = SplitConfig(cold_frac, val_frac, heldout_board_frac, val_board_frac,
                         tuple(sorted(heldout_kinds)) if heldout_kinds is not None else None,
                         min_test_boards=min_test_boards)
    _check(config)
    rng = np.random.default_rng(seed)
    pins = sorted(set(pin_ids))
    cold, val = held_out_groups(pins, groups, round(cold_frac * len(pins)), round(val_frac * len(pins)), rng)
    members: dict[str, set[str]] = defaultdict(set)
    for pin_id, board_id in edges:
        members[board_id].add(pin_id)
    eligible = eligible_boards(members, cold | val, config, board_kinds)
    n_boards = heldout_board_count(len(eligible), config)
    heldout = [eligible[i] for i in rng.permutation(len(eligible))[:n_boards]]
    val_boards = sorted(heldout[: round(config.val_board_frac * len(heldout))])
    duplicate = defaultdict(list)
    for pin in pins:
        if groups and pin in groups:
            duplicate[groups[pin]].append(pin)
    return {
        "seed": int(seed),
        "cold_start_pins": sorted(cold),
        "val_pins": sorted(val),
        "heldout_boards": sorted(heldout),
        "val_boards": val_boards,
        "duplicate_groups": sorted(g for g in duplicate.values() if len(g) > 1),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
    }


PARTITIONS: tuple[str, ...] = ("test", "val")


def partition_boards(splits: dict, partition: str = "test") -> list[str]:
    """The held-out boards that give the ground truth of `partition`: "val" -> val_boards, "test" -> the
    others. A splits.json without val_boards judges both on every held-out board."""
    if partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; expected one of {PARTITIONS}")
    val = set(splits.get("val_boards") or [])
    if not val:
        return list(splits["heldout_boards"])
    return [b for b in splits["heldout_boards"] if (b in val) == (partition == "val")]


def duplicate_group_of(pin_ids: Sequence[str], splits: dict) -> np.ndarray:
    """(P,) group id per pin: pins of one splits.json duplicate group share it, other pins are alone."""
    index = {p: i for i, p in enumerate(pin_ids)}
    group = np.arange(len(pin_ids), dtype=np.int64)
    for members in splits.get("duplicate_groups") or []:
        rows = [index[p] for p in members if p in index]
        if rows:
            group[rows] = min(rows)
    return group


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
    val_boards = len(splits.get("val_boards") or [])
    groups = splits.get("duplicate_groups") or []
    return (
        f"splits: {len(pin_ids) - held} train pins, {len(splits['val_pins'])} val pins, "
        f"{len(splits['cold_start_pins'])} cold-start pins (whole groups of {len(groups)} duplicate groups); "
        f"{len(splits['heldout_boards'])} of {boards} boards held out ({val_boards} for validation); "
        f"{train_edges} of {len(edge_pins)} edges in the training graph"
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
    keys = ["seed", *SPLIT_KEYS, *OPTIONAL_KEYS, "duplicate_groups", "config"]
    text = json.dumps({k: splits[k] for k in keys if k in splits}, indent=1) + "\n"
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


def _is_string_list(values: object) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)


def read_splits(path: str) -> dict:
    """Load and check a splits.json; UserError naming the file and the key when malformed."""
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as f:
            splits = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a splits.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{name}: not valid JSON ({err})") from None
    if not isinstance(splits, dict):
        raise UserError(f"{name}: expected a JSON object")
    for key in SPLIT_KEYS:
        if not _is_string_list(splits.get(key)):
            raise UserError(f"{name}: key '{key}' must be a list of strings")
    for key in OPTIONAL_KEYS:
        if key in splits and not _is_string_list(splits[key]):
            raise UserError(f"{name}: key '{key}' must be a list of strings")
    groups = splits.get("duplicate_groups", [])
    if not isinstance(groups, list) or not all(_is_string_list(g) for g in groups):
        raise UserError(f"{name}: key 'duplicate_groups' must be a list of lists of pin ids")
    splits.setdefault("seed", None)
    return splits


def board_kinds_of(edges) -> dict[str, str | None]:
    """board_id -> its kind, from an EdgesTable's optional `board_kind` column (first value given)."""
    column = edges.extra.get("board_kind")
    kinds: dict[str, str | None] = {}
    for e, b in enumerate(edges.board_index.tolist()):
        board = edges.board_ids[b]
        value = column[e] if column is not None else None
        if kinds.get(board) is None:
            kinds[board] = str(value).strip() if value is not None and str(value).strip() else None
    return kinds


def split_tables(pins, edges, seed: int = 0, config: SplitConfig | None = None, duplicates=None,
                 check_images: bool = True, progress: bool = True) -> tuple[dict, object]:
    """(splits, PinGroups) for loaded tables: duplicate groups found, then `make_splits`."""
    from pinclip.data.groups import DuplicateConfig, find_groups

    config, duplicates = config or SplitConfig(), duplicates or DuplicateConfig()
    found = find_groups(pins, duplicates, check_images=check_images, progress=progress)
    kinds = board_kinds_of(edges)
    if config.heldout_kinds is not None:
        unknown = sorted(set(config.heldout_kinds) - {k for k in kinds.values() if k})
        if unknown:
            known = sorted({k for k in kinds.values() if k})
            raise UserError(f"held-out board kinds {unknown} are not in the boards table's board_kind column "
                            f"(kinds present: {', '.join(known) or 'none: the table has no board_kind column'})")
    edge_pins = [pins.pin_ids[i] for i in edges.pin_index.tolist()]
    edge_boards = [edges.board_ids[b] for b in edges.board_index.tolist()]
    splits = make_splits(
        pins.pin_ids, zip(edge_pins, edge_boards), seed, config.cold_frac, config.val_frac,
        config.heldout_board_frac, val_board_frac=config.val_board_frac, heldout_kinds=config.heldout_kinds,
        groups=dict(zip(pins.pin_ids, found.group.tolist())), board_kinds=kinds,
        min_test_boards=config.min_test_boards,
    )
    splits["config"]["duplicates"] = {**asdict(duplicates), "images_hashed": found.images_hashed}
    return splits, found
