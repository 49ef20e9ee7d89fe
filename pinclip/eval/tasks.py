"""Evaluation tasks built from the dataset and its splits; no model is involved.

    specs = build_eval_tasks(EvalData.from_dataset(dataset), partition="test")
    spec = specs["related"]["cold"]["image"]      # tasks[task][split][regime] -> TaskSpec

Partitions (pinclip.data.splits): "test" judges with the held-out test boards, its query splits
being "warm" (training pins) and "cold" (cold-start pins); "val" judges with the validation boards,
its splits being "warm" (training pins) and "cold" (validation pins). Settings are chosen on "val"
only. A splits.json without val_boards judges both partitions on every held-out board.

The corpus is always the whole catalog (training, validation and cold-start pins together), as a
fresh pin is searched in production: warm and cold numbers are comparable.

Text regimes say which text fields the retrieved pins and the query pins keep: "full" (all),
"title" (the title only), "image" (none: a fresh upload). Pins with nothing left (no image and no
kept field) leave the corpus and the queries of that regime.

Tasks:
- pintext_i2t (regime "full" only): query = a pin's image; corpus = every distinct (field, normalized text)
  of the catalog; relevant = the query pin's own (field, text) items. Twins that share a title
  share the item, so duplicates cannot make a query unanswerable.
- pintext_t2i (regime "full" only): query = a distinct title of the split (or a pin's first present field
  when it has no title); corpus = every catalog image; relevant = the images of every pin with that
  exact (field, normalized text).
- related: query = a pin of the split in a partition board; corpus = the catalog in the regime;
  relevant = the pins sharing a partition board with it, minus its duplicate group (splits.json
  duplicate_groups), which is neither relevant nor ranked: a twin drawn in another style would
  answer the query by itself.
- search: query = a partition board's title (field tag "queries"); relevant = the board's pins of
  the split; its pins of other splits are neither relevant nor ranked (`exclude`).
Queries are drawn at most `max_queries` per task and split (seeded, uniform, kept in catalog
order); related uses one draw for every regime, so regimes compare the same queries.

Warm PinText is a training-fit check (the model trained on exactly these image-text pairs), and its
validation and test queries are disjoint: a warm pin's half ("val" or "test", `warm_half`) is a hash
of the smallest pin id of its duplicate group, a warm text query's half a hash of its normalized
text, and each partition draws warm PinText queries from its own half only. Related Pins and Search
need no such halves: their ground truth is the partition's own boards (val_boards or the test
boards), so a warm pin may be a query of both partitions, but against disjoint relevant sets.

Each spec names the cluster of every query (`query_clusters`), which the bootstrap resamples whole
(pinclip.eval.stats): Related Pins, the query's first judging board (in board-id order; a pin in
several judging boards counts only under its first); Search, the board itself; PinText, the query.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pinclip.data.groups import normalize_text
from pinclip.data.schema import TEXT_FIELDS, field_text
from pinclip.data.splits import duplicate_group_of, partition_boards

SPLITS: tuple[str, ...] = ("warm", "cold")
TASKS: tuple[str, ...] = ("pintext_i2t", "pintext_t2i", "related", "search")
REGIMES: tuple[str, ...] = ("full", "title", "image")
REGIME_FIELDS: dict[str, tuple[str, ...]] = {"full": TEXT_FIELDS, "title": ("title",), "image": ()}
PINTEXT: tuple[str, ...] = ("pintext_i2t", "pintext_t2i")
NO_REGIME = "full"  # the regime key of the PinText tasks: their text side is every field


@dataclass
class EvalData:
    """What the tasks need of a dataset: pins, their texts and images, board ground truth, splits."""

    pin_ids: list[str]
    texts: dict[str, Sequence[Any]]
    has_image: np.ndarray  # (P,) bool
    edge_pins: np.ndarray  # (E,) pin index of each edge
    edge_boards: list[str]  # (E,) board id of each edge
    board_titles: dict[str, Any]
    splits: dict[str, Any]

    @classmethod
    def from_dataset(cls, dataset: Any, has_image: np.ndarray | None = None, splits: dict | None = None) -> EvalData:
        pins, edges = dataset.pins, dataset.edges
        image = np.array([s is not None for s in pins.images]) if has_image is None else np.asarray(has_image, bool)
        return cls(list(pins.pin_ids), pins.texts, image, np.asarray(edges.pin_index, np.int64),
                   [edges.board_ids[b] for b in edges.board_index], dict(zip(edges.board_ids, edges.board_titles)),
                   splits if splits is not None else dataset.splits)


@dataclass
class TaskSpec:
    """Queries, corpus and ground truth of one task on one split in one regime.

    `relevant[i]` and `exclude[i]` are corpus positions. Image, pin and t2i text queries name their
    pin in `query_pins` (t2i also its field in `query_fields`); text corpora name the pin and field
    each distinct text was taken from. `*_ids` are the ids written to TREC run and qrels files.
    """

    task: str
    split: str
    regime: str
    query_kind: str  # "image" | "text" | "pin"
    query_ids: list[str]
    query_pins: np.ndarray | None  # (Q,)
    query_fields: np.ndarray | None  # (Q,) field index of t2i queries
    query_texts: list[str] | None  # Q texts (search, t2i)
    corpus_kind: str  # "text" | "image" | "pin"
    corpus_ids: list[str]
    corpus_pins: np.ndarray  # (N,)
    corpus_fields: np.ndarray | None  # (N,) field index of a text corpus
    corpus_texts: list[str] | None  # N texts of a text corpus
    relevant: list[np.ndarray]
    exclude: list[np.ndarray] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    query_clusters: list[str] | None = None  # Q cluster ids for the bootstrap; None: each query its own

    def clusters(self) -> list[str]:
        """The cluster id of every query (the query id when the spec names none)."""
        return list(self.query_clusters) if self.query_clusters is not None else list(self.query_ids)

    @property
    def num_queries(self) -> int:
        return len(self.relevant)


def _rng(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32("/".join(names).encode())])


def _sample(candidates: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most `limit` candidates, drawn without replacement, in their original order."""
    if len(candidates) <= limit:
        return candidates
    return candidates[np.sort(rng.choice(len(candidates), size=limit, replace=False))]


def warm_half(key: str) -> str:
    """"val" or "test": the partition whose warm PinText queries may use `key` (a pin or a normalized text),
    from the lowest bit of its SHA-256, so about half the keys go to each and the rule never changes."""
    return "val" if hashlib.sha256(key.encode()).digest()[0] % 2 == 0 else "test"


def group_keys(pin_ids: Sequence[str], group: np.ndarray) -> list[str]:
    """Per pin, the smallest pin id of its duplicate group (`duplicate_group_of`): twins share a key."""
    smallest: dict[int, str] = {}
    for g, p in zip(group.tolist(), pin_ids):
        smallest[g] = min(smallest.get(g, p), p)
    return [smallest[g] for g in group.tolist()]


def pin_fields(pin_ids: Sequence[str], texts: dict[str, Sequence[Any]]) -> list[list[tuple[int, str]]]:
    """Per pin, the (field index, text) of its present text fields, in TEXT_FIELDS order."""
    out: list[list[tuple[int, str]]] = [[] for _ in pin_ids]
    for f, name in enumerate(TEXT_FIELDS):
        values = texts.get(name)
        if values is None:
            continue
        if len(values) != len(pin_ids):
            raise ValueError(f"text field {name!r} has {len(values)} values for {len(pin_ids)} pins")
        for i, value in enumerate(values):
            if value is None or isinstance(value, float):  # null, or NaN from a dataframe
                continue
            try:
                text = field_text(value)
            except (TypeError, AttributeError) as err:
                raise ValueError(f"pin {pin_ids[i]!r} (row {i}), field {name!r}: not text: {value!r}") from err
            if text:
                out[i].append((f, text))
    return out


def regime_mask(fields: list[list[tuple[int, str]]], regime: str) -> np.ndarray:
    """(P, F) bool: the text fields each pin keeps in `regime`."""
    keep = {TEXT_FIELDS.index(name) for name in REGIME_FIELDS[regime]}
    mask = np.zeros((len(fields), len(TEXT_FIELDS)), bool)
    for p, present in enumerate(fields):
        for f, _ in present:
            mask[p, f] = f in keep
    return mask


def split_pins(pin_ids: Sequence[str], splits: dict[str, Any], partition: str) -> dict[str, np.ndarray]:
    """Sorted pin indices of the "warm" and "cold" query splits of a partition (module docstring). Pins listed
    under the optional `untrained_pins` (training pins a dataset-scaling run left out) are neither: they stay
    in the corpus but query nothing."""
    index = {p: i for i, p in enumerate(pin_ids)}
    held = {}
    for key in ("cold_start_pins", "val_pins"):
        ids = splits.get(key) or []
        if not isinstance(ids, list):
            raise ValueError(f"splits[{key!r}] must be a list of pin ids, got {type(ids).__name__}")
        held[key] = np.array(sorted(index[p] for p in ids if p in index), np.int64)
    untrained = np.array([index[p] for p in splits.get("untrained_pins") or [] if p in index], np.int64)
    warm = np.setdiff1d(np.arange(len(pin_ids)), np.concatenate([held["cold_start_pins"], held["val_pins"], untrained]))
    return {"warm": warm, "cold": held["val_pins" if partition == "val" else "cold_start_pins"]}


def board_members(data: EvalData, partition: str) -> dict[str, np.ndarray]:
    """Sorted pin indices of each board that judges `partition`."""
    wanted = set(partition_boards(data.splits, partition))
    members: dict[str, set[int]] = {b: set() for b in wanted}
    for pin, board in zip(data.edge_pins.tolist(), data.edge_boards):
        if board in members:
            members[board].add(pin)
    return {b: np.array(sorted(m), np.int64) for b, m in sorted(members.items())}


def _text_items(fields: list[list[tuple[int, str]]]) -> tuple[dict[tuple[int, str], int], list[tuple[int, int, str]]]:
    """Distinct (field, normalized text) items of the catalog: key -> item position, and per item
    its representative (pin, field, raw text), the first occurrence in catalog order."""
    position: dict[tuple[int, str], int] = {}
    items: list[tuple[int, int, str]] = []
    for p, present in enumerate(fields):
        for f, text in present:
            key = (f, normalize_text(text) or text)
            if key not in position:
                position[key] = len(items)
                items.append((p, f, text))
    return position, items


def _pintext_specs(data: EvalData, fields, pins: np.ndarray, split: str, max_queries: int, seed: int,
                   half: str | None = None, pin_keys: Sequence[str] = ()) -> dict[str, TaskSpec]:
    """PinText specs of one split; `half` ("val" | "test", warm only) keeps the queries of that half."""
    position, items = _text_items(fields)
    keys = [[(f, normalize_text(t) or t) for f, t in present] for present in fields]
    specs: dict[str, TaskSpec] = {}
    candidates = np.array([p for p in pins if data.has_image[p] and fields[p]
                           and (half is None or warm_half(pin_keys[p]) == half)], np.int64)
    queries = _sample(candidates, max_queries, _rng(seed, "pintext_i2t", split))
    if len(queries):
        specs["pintext_i2t"] = TaskSpec(
            "pintext_i2t", split, NO_REGIME, "image", [data.pin_ids[p] for p in queries], queries, None, None,
            "text", [f"t{j}" for j in range(len(items))], np.array([i[0] for i in items], np.int64),
            np.array([i[1] for i in items], np.int64), [i[2] for i in items],
            [np.unique([position[k] for k in keys[p]]).astype(np.int64) for p in queries],
            counts={"candidates": len(candidates)})
    image_pins = np.flatnonzero(data.has_image)
    with_key: dict[tuple[int, str], list[int]] = defaultdict(list)  # (field, text) -> corpus positions
    for j, p in enumerate(image_pins.tolist()):
        for key in keys[p]:
            with_key[key].append(j)
    first: dict[tuple[int, str], int] = {}  # distinct query texts of the split: the title, else the first field
    for p in pins.tolist():
        if fields[p]:
            f, text = next(((f, t) for f, t in fields[p] if f == 0), fields[p][0])
            first.setdefault((f, normalize_text(text) or text), p)
    t2i = [(key, p) for key, p in first.items() if with_key.get(key) and (half is None or warm_half(key[1]) == half)]
    chosen = _sample(np.arange(len(t2i)), max_queries, _rng(seed, "pintext_t2i", split))
    if len(chosen):
        picked = [t2i[i] for i in chosen]
        specs["pintext_t2i"] = TaskSpec(
            "pintext_t2i", split, NO_REGIME, "text", [data.pin_ids[p] for _, p in picked],
            np.array([p for _, p in picked], np.int64), np.array([key[0] for key, _ in picked], np.int64),
            [next(t for f, t in fields[p] if f == key[0]) for key, p in picked],
            "image", [data.pin_ids[p] for p in image_pins], image_pins, None, None,
            [np.array(with_key[key], np.int64) for key, _ in picked], counts={"candidates": len(t2i)})
    return specs


def _in_regime(data: EvalData, fields, regime: str) -> np.ndarray:
    """(P,) bool: pins with something left in the regime (an image or a kept text field)."""
    return data.has_image | regime_mask(fields, regime).any(1)


def _related_specs(data: EvalData, fields, pins: np.ndarray, boards: dict[str, np.ndarray], group: np.ndarray,
                   split: str, regimes: Sequence[str], max_queries: int, seed: int) -> dict[str, TaskSpec]:
    boards_of: dict[int, list[str]] = defaultdict(list)
    for board, members in boards.items():
        for p in members.tolist():
            boards_of[p].append(board)
    in_split = np.array([p for p in pins.tolist() if boards_of.get(p)], np.int64)
    drawn = _sample(in_split, max_queries, _rng(seed, "related", split))
    specs = {}
    for regime in regimes:
        ok = _in_regime(data, fields, regime)
        corpus = np.flatnonzero(ok)
        where = np.full(len(data.pin_ids), -1, np.int64)
        where[corpus] = np.arange(len(corpus))
        queries, relevant, exclude = [], [], []
        for p in drawn.tolist():
            if not ok[p]:
                continue
            twins = np.flatnonzero(group == group[p])  # the query's duplicate group, itself included
            mates = np.setdiff1d(np.concatenate([boards[b] for b in boards_of[p]]), twins)
            rel = where[mates][where[mates] >= 0]
            if len(rel):
                queries.append(p)
                relevant.append(np.sort(rel))
                exclude.append(where[twins][where[twins] >= 0])
        if queries:
            q = np.array(queries, np.int64)
            specs[regime] = TaskSpec(
                "related", split, regime, "pin", [data.pin_ids[p] for p in q], q, None, None, "pin",
                [data.pin_ids[p] for p in corpus], corpus, None, None, relevant, exclude,
                counts={"candidates": len(in_split)}, query_clusters=[boards_of[p][0] for p in queries])
    return specs


def _search_specs(data: EvalData, fields, pins: np.ndarray, boards: dict[str, np.ndarray], split: str,
                  regimes: Sequence[str], max_queries: int, seed: int) -> dict[str, TaskSpec]:
    titled = []
    for board, members in boards.items():
        title = data.board_titles.get(board)
        if isinstance(title, str) and title.strip():
            titled.append((board, title.strip(), members))
    chosen = [titled[i] for i in _sample(np.arange(len(titled)), max_queries, _rng(seed, "search", split))]
    in_split = np.zeros(len(data.pin_ids), bool)
    in_split[pins] = True
    specs = {}
    for regime in regimes:
        corpus = np.flatnonzero(_in_regime(data, fields, regime))
        where = np.full(len(data.pin_ids), -1, np.int64)
        where[corpus] = np.arange(len(corpus))
        ids, texts, relevant, exclude = [], [], [], []
        for board, title, members in chosen:
            present = members[where[members] >= 0]
            rel, other = present[in_split[present]], present[~in_split[present]]
            if len(rel):
                ids.append(board)
                texts.append(title)
                relevant.append(np.sort(where[rel]))
                exclude.append(np.sort(where[other]))
        if ids:
            specs[regime] = TaskSpec(
                "search", split, regime, "text", ids, None, None, texts, "pin", [data.pin_ids[p] for p in corpus],
                corpus, None, None, relevant, exclude,
                counts={"candidates": len(titled), "boards_without_title": len(boards) - len(titled)},
                query_clusters=list(ids))
    return specs


def build_eval_tasks(data: EvalData, partition: str = "test", regimes: Sequence[str] = REGIMES,
                     tasks: Sequence[str] = TASKS, max_queries: int = 1000, seed: int = 0
                     ) -> dict[str, dict[str, dict[str, TaskSpec]]]:
    """tasks[task][split][regime] -> TaskSpec (PinText under the regime key NO_REGIME); tasks, splits
    and regimes without a single query are left out."""
    unknown = sorted(set(regimes) - set(REGIMES)) + sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown regimes or tasks {unknown}; regimes: {REGIMES}, tasks: {TASKS}")
    if len(set(data.pin_ids)) != len(data.pin_ids):
        raise ValueError("pin_ids contain duplicates")
    if data.has_image.shape != (len(data.pin_ids),):
        raise ValueError(f"has_image has shape {data.has_image.shape}, expected ({len(data.pin_ids)},)")
    fields = pin_fields(data.pin_ids, data.texts)
    by_split = split_pins(data.pin_ids, data.splits, partition)
    boards = board_members(data, partition)
    group = duplicate_group_of(data.pin_ids, data.splits)
    keys = group_keys(data.pin_ids, group)
    out: dict[str, dict[str, dict[str, TaskSpec]]] = defaultdict(dict)
    for split, pins in by_split.items():
        if any(t in tasks for t in PINTEXT):
            half = partition if split == "warm" else None  # warm PinText: this partition's half only
            for task, spec in _pintext_specs(data, fields, pins, split, max_queries, seed, half, keys).items():
                if task in tasks:
                    out[task][split] = {NO_REGIME: spec}
        if "related" in tasks:
            specs = _related_specs(data, fields, pins, boards, group, split, regimes, max_queries, seed)
            if specs:
                out["related"][split] = specs
        if "search" in tasks:
            specs = _search_specs(data, fields, pins, boards, split, regimes, max_queries, seed)
            if specs:
                out["search"][split] = specs
    return {t: dict(out[t]) for t in TASKS if t in out}
