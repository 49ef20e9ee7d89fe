"""Evaluation tasks built from the dataset and its splits (DESIGN.md §5); no model is involved.

`build_eval_tasks` returns tasks[task][split] -> TaskSpec: what to embed as queries and as corpus
(pin indices in catalog order, or texts) and, per query, the relevant corpus positions.

Splits (from splits.json): "warm" = pins seen in training (neither cold-start nor validation
pins); "cold" = the cold-start pins. Validation pins are in neither. Each split's corpus holds only
that split's pins, so warm and cold numbers are comparable in difficulty only at equal size.

Tasks:
- pintext_i2t: query = a pin's image; corpus = every present text field of the split's sampled
  pins, each a separate item (lists joined by `schema.field_text`); relevant = the pin's own fields.
- pintext_t2i: query = a pin's title, or its first present field in `schema.TEXT_FIELDS` order;
  corpus = the images of the sampled pins; relevant = the pin's own image.
- related: query = a pin in a held-out board that has >= 2 pins of the split; corpus = all pins
  of the split (fused pin embeddings); relevant = the other pins of the split sharing any held-out
  board with it; `exclude` holds the query's own corpus position.
- search: query = a held-out board's title (boards without a title are skipped); corpus = all pins
  of the split; relevant = the board's pins in the split (boards with none are skipped).
Only held-out boards give ground truth: they are absent from the training graph.

Sampling, deterministic for a given seed: pintext first draws at most `max_pins` pins of the split
(shared by both directions), then every task draws at most `max_queries` queries; draws are
uniform without replacement and kept in catalog (or board id) order. Image queries and the image
corpus use only pins with an image (`has_image`; all pins when not given). A task/split with no
query is left out of the result. `TaskSpec.counts` records candidates before sampling and skips.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pinclip.data.schema import TEXT_FIELDS, field_text

SPLITS: tuple[str, ...] = ("warm", "cold")
TASKS: tuple[str, ...] = ("pintext_i2t", "pintext_t2i", "related", "search")


@dataclass
class TaskSpec:
    """Queries, corpus and ground truth of one task on one split.

    `query_kind` says what to embed for the queries: "image"/"pin" -> the pins in `query_pins`,
    "text" -> `query_texts` (for pintext_t2i, `query_pins` also names the pin each text came
    from). `relevant[i]` and `exclude[i]` are positions in the corpus, not pin indices.
    """

    query_kind: str  # "image" | "text" | "pin"
    query_pins: np.ndarray | None  # (Q,) pin indices
    query_texts: list[str] | None  # Q texts
    corpus_kind: str  # "text" | "image" | "pin"
    corpus_pins: np.ndarray  # (N,) pin index of each corpus item
    corpus_texts: list[str] | None  # N texts when corpus_kind == "text"
    relevant: list[np.ndarray]  # Q arrays of corpus positions
    exclude: np.ndarray | None = None  # (Q,) corpus position of the query itself
    corpus_fields: list[str] | None = None  # N field names when corpus_kind == "text"
    query_boards: list[str] | None = None  # Q board ids for search
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def num_queries(self) -> int:
        return len(self.relevant)


def _task_rng(seed: int, task: str, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"{task}/{split}".encode())])


def _sample(candidates: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most `limit` candidates, drawn without replacement, in their original order."""
    if len(candidates) <= limit:
        return candidates
    keep = np.sort(rng.choice(len(candidates), size=limit, replace=False))
    return candidates[keep]


def _pin_texts(pin_ids: Sequence[str], texts: dict[str, Sequence[Any]]) -> list[list[tuple[str, str]]]:
    """Per pin, the (field, text) pairs of its present text fields, in TEXT_FIELDS order."""
    out: list[list[tuple[str, str]]] = [[] for _ in pin_ids]
    for name in TEXT_FIELDS:
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
                raise ValueError(
                    f"pin {pin_ids[i]!r} (row {i}), field {name!r}: not text: {value!r}"
                ) from err
            if text:
                out[i].append((name, text))
    return out


def split_pin_indices(pin_ids: Sequence[str], splits: dict[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    """Sorted pin indices of the "warm" and "cold" splits, and how many split ids name no pin."""
    index = {p: i for i, p in enumerate(pin_ids)}
    held: dict[str, set[int]] = {}
    unknown = 0
    for key in ("cold_start_pins", "val_pins"):
        ids = splits.get(key) or []
        if not isinstance(ids, list):
            raise ValueError(f"splits[{key!r}] must be a list of pin ids, got {type(ids).__name__}")
        held[key] = {index[p] for p in ids if p in index}
        unknown += sum(1 for p in ids if p not in index)
    cold = np.array(sorted(held["cold_start_pins"]), dtype=np.int64)
    not_warm = held["cold_start_pins"] | held["val_pins"]
    warm = np.array([i for i in range(len(pin_ids)) if i not in not_warm], dtype=np.int64)
    return {"warm": warm, "cold": cold}, unknown


def _heldout_board_pins(
    pin_ids: Sequence[str], edge_pin_ids: Sequence[str], edge_board_ids: Sequence[str], splits: dict[str, Any]
) -> tuple[dict[str, np.ndarray], int]:
    """Sorted pin indices of each held-out board, and how many edges name an unknown pin."""
    if len(edge_pin_ids) != len(edge_board_ids):
        raise ValueError(f"{len(edge_pin_ids)} edge pin ids but {len(edge_board_ids)} edge board ids")
    heldout = splits.get("heldout_boards") or []
    if not isinstance(heldout, list):
        raise ValueError(
            f"splits['heldout_boards'] must be a list of board ids, got {type(heldout).__name__}"
        )
    index = {p: i for i, p in enumerate(pin_ids)}
    members: dict[str, set[int]] = {str(b): set() for b in heldout}
    unknown = 0
    for pin, board in zip(edge_pin_ids, edge_board_ids):
        if str(board) in members:
            if pin in index:
                members[str(board)].add(index[pin])
            else:
                unknown += 1
    return {b: np.array(sorted(m), dtype=np.int64) for b, m in sorted(members.items())}, unknown


def _pintext_specs(
    sampled: np.ndarray,
    pin_texts: list[list[tuple[str, str]]],
    has_image: np.ndarray,
    max_queries: int,
    rng_pair: tuple[np.random.Generator, np.random.Generator],
) -> dict[str, TaskSpec]:
    """pintext_i2t and pintext_t2i over one split's sampled pins."""
    corpus_pins, corpus_texts, corpus_fields, own_fields = [], [], [], {}
    for p in sampled:
        own_fields[int(p)] = np.arange(
            len(corpus_texts), len(corpus_texts) + len(pin_texts[p]), dtype=np.int64
        )
        for name, text in pin_texts[p]:
            corpus_pins.append(p)
            corpus_texts.append(text)
            corpus_fields.append(name)
    specs: dict[str, TaskSpec] = {}
    i2t_candidates = np.array([p for p in sampled if has_image[p] and pin_texts[p]], dtype=np.int64)
    i2t_queries = _sample(i2t_candidates, max_queries, rng_pair[0])
    if len(i2t_queries):
        specs["pintext_i2t"] = TaskSpec(
            query_kind="image",
            query_pins=i2t_queries,
            query_texts=None,
            corpus_kind="text",
            corpus_pins=np.array(corpus_pins, dtype=np.int64),
            corpus_texts=corpus_texts,
            relevant=[own_fields[int(p)] for p in i2t_queries],
            corpus_fields=corpus_fields,
            counts={"candidates": len(i2t_candidates), "corpus_pins": len(sampled)},
        )
    image_pins = np.array([p for p in sampled if has_image[p]], dtype=np.int64)
    image_position = {int(p): j for j, p in enumerate(image_pins)}
    t2i_candidates = np.array([p for p in image_pins if pin_texts[p]], dtype=np.int64)
    t2i_queries = _sample(t2i_candidates, max_queries, rng_pair[1])
    if len(t2i_queries):
        specs["pintext_t2i"] = TaskSpec(
            query_kind="text",
            query_pins=t2i_queries,
            query_texts=[_query_text(pin_texts[p]) for p in t2i_queries],
            corpus_kind="image",
            corpus_pins=image_pins,
            corpus_texts=None,
            relevant=[np.array([image_position[int(p)]], dtype=np.int64) for p in t2i_queries],
            counts={"candidates": len(t2i_candidates), "corpus_pins": len(image_pins)},
        )
    return specs


def _query_text(fields: list[tuple[str, str]]) -> str:
    """The pin's title, else its first present field."""
    return next((text for name, text in fields if name == "title"), fields[0][1])


def _related_spec(
    split_pins: np.ndarray, boards: dict[str, np.ndarray], max_queries: int, rng: np.random.Generator
) -> TaskSpec | None:
    """Pin→pin: neighbors are the split's pins sharing a held-out board with the query."""
    shared: list[np.ndarray] = []  # held-out boards with >= 2 pins of the split: their split pins
    boards_of_pin: dict[int, list[int]] = {}
    for members in boards.values():
        in_split = members[np.isin(members, split_pins)]
        if len(in_split) >= 2:
            for p in in_split.tolist():
                boards_of_pin.setdefault(p, []).append(len(shared))
            shared.append(in_split)
    candidates = np.array(sorted(boards_of_pin), dtype=np.int64)
    queries = _sample(candidates, max_queries, rng)
    if not len(queries):
        return None
    position = np.searchsorted(split_pins, queries)  # split_pins is sorted: corpus position of each query
    relevant = []
    for p in queries.tolist():
        neighbors = np.setdiff1d(np.concatenate([shared[b] for b in boards_of_pin[p]]), [p])  # sorted, unique
        relevant.append(np.searchsorted(split_pins, neighbors).astype(np.int64))
    return TaskSpec(
        query_kind="pin",
        query_pins=queries,
        query_texts=None,
        corpus_kind="pin",
        corpus_pins=split_pins,
        corpus_texts=None,
        relevant=relevant,
        exclude=position.astype(np.int64),
        counts={"candidates": len(candidates)},
    )


def _search_spec(
    split_pins: np.ndarray,
    boards: dict[str, np.ndarray],
    board_titles: dict[str, Any],
    max_queries: int,
    rng: np.random.Generator,
) -> TaskSpec | None:
    """Board title→pins: the board's pins of the split are relevant."""
    board_ids, titles, relevant = [], [], []
    no_title = no_pins = 0
    for board, members in boards.items():
        title = board_titles.get(board)
        title = title.strip() if isinstance(title, str) else ""
        in_split = members[np.isin(members, split_pins)]
        if not title:
            no_title += 1
        elif not len(in_split):
            no_pins += 1
        else:
            board_ids.append(board)
            titles.append(title)
            relevant.append(np.searchsorted(split_pins, in_split).astype(np.int64))
    keep = _sample(np.arange(len(board_ids)), max_queries, rng)
    if not len(keep):
        return None
    return TaskSpec(
        query_kind="text",
        query_pins=None,
        query_texts=[titles[j] for j in keep],
        corpus_kind="pin",
        corpus_pins=split_pins,
        corpus_texts=None,
        relevant=[relevant[j] for j in keep],
        query_boards=[board_ids[j] for j in keep],
        counts={
            "candidates": len(board_ids),
            "boards_without_title": no_title,
            "boards_without_pins": no_pins,
        },
    )


def build_eval_tasks(
    pin_ids: Sequence[str],
    texts: dict[str, Sequence[Any]],
    edge_pin_ids: Sequence[str],
    edge_board_ids: Sequence[str],
    board_titles: dict[str, Any],
    splits: dict[str, Any],
    has_image: Sequence[bool] | np.ndarray | None = None,
    max_queries: int = 1000,
    max_pins: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, TaskSpec]]:
    """All tasks on the warm and cold splits: tasks[task][split] -> TaskSpec (see module docstring)."""
    if len(set(pin_ids)) != len(pin_ids):
        raise ValueError("pin_ids contain duplicates")
    has_image = np.ones(len(pin_ids), dtype=bool) if has_image is None else np.asarray(has_image, dtype=bool)
    if has_image.shape != (len(pin_ids),):
        raise ValueError(f"has_image has shape {has_image.shape}, expected ({len(pin_ids)},)")
    pin_texts = _pin_texts(pin_ids, texts)
    split_pins, unknown_split_ids = split_pin_indices(pin_ids, splits)
    boards, unknown_edge_pins = _heldout_board_pins(pin_ids, edge_pin_ids, edge_board_ids, splits)
    tasks: dict[str, dict[str, TaskSpec]] = {task: {} for task in TASKS}
    for split in SPLITS:
        pins = split_pins[split]
        sampled = _sample(pins, max_pins, _task_rng(seed, "pintext", split))
        rngs = (_task_rng(seed, "pintext_i2t", split), _task_rng(seed, "pintext_t2i", split))
        specs: dict[str, TaskSpec | None] = dict(
            _pintext_specs(sampled, pin_texts, has_image, max_queries, rngs)
        )
        specs["related"] = _related_spec(pins, boards, max_queries, _task_rng(seed, "related", split))
        specs["search"] = _search_spec(
            pins, boards, board_titles, max_queries, _task_rng(seed, "search", split)
        )
        for task, spec in specs.items():
            if spec is not None:
                spec.counts |= {
                    "split_ids_unknown": unknown_split_ids,
                    "edges_unknown_pin": unknown_edge_pins,
                }
                tasks[task][split] = spec
    return {task: by_split for task, by_split in tasks.items() if by_split}
