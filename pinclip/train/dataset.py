"""Training data: pins, the training graph and its mined neighbors, and deterministic batches.

Which pins train: every pin that is neither cold-start nor validation (optionally a seeded share
of them, for dataset-scaling curves). The training graph drops held-out boards and every pin that
does not train, so nothing used as ground truth is seen (DESIGN.md §1).

A batch of B pins is B/2 *anchors* (a seeded permutation of the training pins, epoch by epoch)
and B/2 *partners*: for an anchor with graph neighbors, one of its random-walk neighbors drawn in
proportion to visit counts; for one without, a random training pin (its neighbor term is masked).
Batch `t` is a pure function of (seed, t), so a resumed run sees exactly the same batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pinclip.cli import UserError
from pinclip.config import GraphConfig
from pinclip.data.tables import EdgesTable, PinsTable, load_edges, load_pins
from pinclip.graph.csr import BipartiteGraph
from pinclip.graph.random_walk import RandomWalkConfig, mine_neighbors


@dataclass
class Dataset:
    pins: PinsTable
    edges: EdgesTable
    splits: dict


@dataclass
class TrainingData:
    dataset: Dataset
    train_rows: np.ndarray  # (N_train,) pin positions that train
    val_rows: np.ndarray  # (N_val,)
    graph: BipartiteGraph  # training graph over all pin positions
    neighbors: np.ndarray  # (P, K) int64, -1 padding
    counts: np.ndarray  # (P, K) visit counts
    walk_steps: int


def load_dataset(pins_path: str | Path, boards_path: str | Path, splits_path: str | Path | None,
                 check_images: bool = False) -> Dataset:
    """Pins, edges and splits; fatal problems raise UserError with every problem listed."""
    pins, report = load_pins(str(pins_path), check_images=check_images)
    edges, edge_report = load_edges(str(boards_path), pins.pin_ids, pins.skipped_ids)
    report.extend(edge_report)
    report.raise_if_fatal()
    splits = {"seed": 0, "cold_start_pins": [], "val_pins": [], "heldout_boards": []}
    if splits_path is not None:
        path = Path(splits_path)
        try:
            splits.update(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"{path}: cannot read splits: {err}") from None
    return Dataset(pins, edges, splits)


def load_dataset_dir(data_dir: str | Path) -> Dataset:
    d = Path(data_dir)
    for name in ("pins.parquet", "boards.parquet", "splits.json"):
        if not (d / name).is_file():
            raise UserError(f"{d / name} not found (build the demo corpus with `pinclip data demo --out {d}`)")
    return load_dataset(d / "pins.parquet", d / "boards.parquet", d / "splits.json")


def prepare_training(dataset: Dataset, graph_cfg: GraphConfig, seed: int, train_fraction: float = 1.0,
                     progress: bool = True) -> TrainingData:
    pins, edges, splits = dataset.pins, dataset.edges, dataset.splits
    held = set(splits.get("cold_start_pins", [])) | set(splits.get("val_pins", []))
    index = pins.index
    train_rows = np.array([i for i, p in enumerate(pins.pin_ids) if p not in held], np.int64)
    if train_fraction < 1.0:
        rng = np.random.default_rng([seed, 7])
        keep = max(2, int(round(len(train_rows) * train_fraction)))
        train_rows = np.sort(rng.choice(train_rows, keep, replace=False))
    val_rows = np.array(sorted(index[p] for p in splits.get("val_pins", []) if p in index), np.int64)
    if len(train_rows) < 2:
        raise UserError(f"only {len(train_rows)} training pins: nothing to train on")
    not_training = set(pins.pin_ids) - {pins.pin_ids[i] for i in train_rows}
    graph = BipartiteGraph.from_edges(
        pins.pin_ids, [pins.pin_ids[i] for i in edges.pin_index], [edges.board_ids[b] for b in edges.board_index],
        exclude_boards=set(splits.get("heldout_boards", [])), exclude_pins=not_training,
    )
    mined = mine_neighbors(graph, RandomWalkConfig(
        num_walkers_per_pin=graph_cfg.walkers_per_pin, walk_length=graph_cfg.walk_length,
        restart_prob=graph_cfg.restart_prob, top_k=graph_cfg.top_k,
        board_degree_damping=graph_cfg.board_damping, seed=seed), progress=progress)
    return TrainingData(dataset, train_rows, val_rows, graph, mined.neighbors, mined.counts, mined.walk_steps)


@dataclass
class Batch:
    rows: np.ndarray  # (B,) pin positions: anchors then partners
    has_neighbor: np.ndarray  # (B/2,) bool: partner i is anchor i's graph neighbor
    share_board: np.ndarray  # (B/2, B/2) bool: anchor i and partner j share a training board (i != j)


def batch_at(data: TrainingData, step: int, batch_size: int, seed: int) -> Batch:
    """The global batch of step `step` (deterministic in (seed, step))."""
    half = batch_size // 2
    rows = data.train_rows
    per_epoch = max(len(rows) // half, 1)
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, 1, epoch]).permutation(rows)
    anchors = np.resize(perm[pos * half :], half) if len(perm) >= half else perm[np.arange(half) % len(perm)]
    rng = np.random.default_rng([seed, 2, step])
    partners = np.empty(half, np.int64)
    has_neighbor = np.zeros(half, bool)
    for i, a in enumerate(anchors):
        nb, cnt = data.neighbors[a], data.counts[a].astype(np.float64)
        valid = nb >= 0
        if valid.any():
            partners[i] = rng.choice(nb[valid], p=cnt[valid] / cnt[valid].sum())
            has_neighbor[i] = True
        else:
            partners[i] = rng.choice(rows)
    return Batch(np.concatenate([anchors, partners]), has_neighbor, share_board_mask(data.graph, anchors, partners))


def share_board_mask(graph: BipartiteGraph, anchors: np.ndarray, partners: np.ndarray) -> np.ndarray:
    """(A, P) bool: anchor i and partner j (j != i) are the same pin or share a training board."""
    def incidence(rows: np.ndarray, columns: dict[int, int]) -> np.ndarray:
        m = np.zeros((len(rows), len(columns)), np.float32)
        for i, r in enumerate(rows):
            m[i, [columns[b] for b in graph.boards_of(int(r)).tolist()]] = 1.0
        return m

    batch_boards = np.unique(np.concatenate([graph.boards_of(int(r)) for r in (*anchors, *partners)] or [[]]))
    columns = {int(b): k for k, b in enumerate(batch_boards)}
    shared = incidence(anchors, columns) @ incidence(partners, columns).T > 0  # (A, P)
    shared |= anchors[:, None] == partners[None, :]
    np.fill_diagonal(shared, False)
    return shared
