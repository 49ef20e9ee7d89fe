"""Training data: pins, the training graph and its mined neighbors, and deterministic batches.

Which pins train: every pin that is neither cold-start nor validation (optionally a seeded share
of them, for dataset-scaling curves). The training graph drops held-out boards and every pin that
does not train, so nothing used as ground truth is seen.

A batch is, per rank, [anchors; partners; hard negatives]: anchors are a seeded permutation of the
training pins, epoch by epoch; an anchor's partner is one of its random-walk neighbors drawn in
proportion to visit counts (a random training pin when it has none; its neighbor term is masked);
an optional hard negative is a pin further down the anchor's walk ranking that shares no board with
it (related, but not a neighbor: PinSage's hard negatives). Beside the rows, a batch carries what
the losses must not treat as negatives (`same`: the same pin, duplicate group or normalized text;
`share_board`: a shared training board), which text fields the fused pass sees (`fused_keep`:
field dropout, so fresh pins with little text are trained for) and the log sampling probability
of each row's pin (`log_q`, for the sampling-bias correction). Batch `t` is a pure function of
(seed, t, world size), so a resumed run sees exactly the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from pinclip.cli import UserError
from pinclip.config import GraphConfig
from pinclip.data.groups import text_key
from pinclip.data.schema import TEXT_FIELDS
from pinclip.data.splits import duplicate_group_of, read_splits
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
    group: np.ndarray  # (P,) pins with the same id are duplicates (group, identical normalized text)
    incidence: sparse.csr_matrix  # (P, boards) 1 where a pin is in a training board
    log_q: np.ndarray  # (P,) log probability that a batch slot holds the pin (anchors + partners)
    hard: np.ndarray  # (P, H) hard-negative candidates, -1 padding
    board_titles: list[str]  # title of each training-graph board ('' when it has none)


@dataclass
class BatchConfig:
    """How a batch is drawn (the trainer's view of TrainConfig; see config.py for the meaning)."""

    batch_size: int = 128
    seed: int = 0
    hard_negatives: bool = False
    field_dropout: float = 0.0
    text_dropout: float = 0.0
    title_only: float = 0.0
    board_titles: int = 0  # training boards per row whose titles join the batch (0: none)


def load_dataset(pins_path: str | Path, boards_path: str | Path, splits_path: str | Path | None,
                 check_images: bool = False) -> Dataset:
    """Pins, edges and splits; fatal problems raise UserError with every problem listed."""
    pins, report = load_pins(str(pins_path), check_images=check_images)
    edges, edge_report = load_edges(str(boards_path), pins.pin_ids, pins.skipped_ids)
    report.extend(edge_report)
    report.raise_if_fatal()
    splits = {"seed": 0, "cold_start_pins": [], "val_pins": [], "heldout_boards": []}
    if splits_path is not None:
        splits.update(read_splits(str(splits_path)))
    return Dataset(pins, edges, splits)


def load_dataset_dir(data_dir: str | Path) -> Dataset:
    """A dataset folder: pins and boards tables in any documented format and splits.json
    (pinclip.train.data_source.folder_source says what is missing)."""
    from pinclip.train.data_source import folder_source, load_source

    return load_source(folder_source(data_dir))


def duplicate_ids(pins: PinsTable, splits: dict) -> np.ndarray:
    """(P,) one id per set of duplicates: the splits' duplicate groups joined with identical normalized text."""
    from scipy.sparse.csgraph import connected_components

    n = len(pins)
    group = duplicate_group_of(pins.pin_ids, splits)  # (P,) a member's row per group
    first: dict[str, int] = {}
    texts = np.array([first.setdefault(k, i) if (k := text_key(pins.texts, i)) else i for i in range(n)])
    links = np.concatenate([np.stack([np.arange(n), group]), np.stack([np.arange(n), texts])], axis=1)  # (2, 2P)
    graph = sparse.coo_matrix((np.ones(links.shape[1]), (links[0], links[1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def sampling_log_q(train_rows: np.ndarray, neighbors: np.ndarray, counts: np.ndarray, num_pins: int) -> np.ndarray:
    """(P,) log of how often a pin fills a batch slot: uniformly as an anchor, by visit share as a partner."""
    q = np.zeros(num_pins)
    q[train_rows] += 1.0 / len(train_rows)  # anchor slots
    rows = train_rows[(neighbors[train_rows] >= 0).any(1)]
    share = counts[rows].astype(np.float64)
    share /= share.sum(1, keepdims=True)  # (R, K) partner distribution of each anchor
    valid = neighbors[rows] >= 0
    np.add.at(q, neighbors[rows][valid], share[valid] / len(train_rows))  # partner slots
    return np.log(np.maximum(q / 2.0, 1e-12))


def hard_candidates(graph: BipartiteGraph, ranked: np.ndarray, start: int) -> np.ndarray:
    """(P, H) pins from rank `start` on of each pin's walk ranking that share no board with it (-1 padding)."""
    out = np.full((ranked.shape[0], max(ranked.shape[1] - start, 0)), -1, np.int64)
    for p in np.flatnonzero(ranked[:, start] >= 0):
        boards = set(graph.boards_of(int(p)).tolist())
        far = [int(c) for c in ranked[p, start:] if c >= 0 and not boards & set(graph.boards_of(int(c)).tolist())]
        out[p, : len(far)] = far
    return out


def training_subset(pins: PinsTable, splits: dict, fraction: float = 1.0, seed: int = 0) -> np.ndarray:
    """Sorted rows of the pins a run trains on: every pin neither cold-start nor validation, or for a fraction
    below 1 whole duplicate groups (`duplicate_ids`) in a seeded order, each taken while it fits under
    round(N * fraction) pins (at least 2); the order depends on the seed only. The evaluation recomputes it
    to judge as warm only the pins a scaling run trained on."""
    held = set(splits.get("cold_start_pins", [])) | set(splits.get("val_pins", []))
    rows = np.array([i for i, p in enumerate(pins.pin_ids) if p not in held], np.int64)
    if fraction >= 1.0:
        return rows
    keep = max(2, int(round(len(rows) * fraction)))
    groups: dict[int, list[int]] = {}
    for row, g in zip(rows.tolist(), duplicate_ids(pins, splits)[rows].tolist()):
        groups.setdefault(g, []).append(row)
    ordered = list(groups.values())  # in catalog order of each group's first training pin
    order = np.random.default_rng([seed, 7]).permutation(len(ordered)).tolist()
    chosen: list[int] = []
    for i in order:
        if len(chosen) + len(ordered[i]) <= keep:
            chosen += ordered[i]
    for i in order:  # fewer than 2 pins: every group was too large; the first ones whatever their size
        if len(chosen) >= 2:
            break
        if ordered[i][0] not in chosen:
            chosen += ordered[i]
    return np.array(sorted(chosen), np.int64)


def prepare_training(dataset: Dataset, graph_cfg: GraphConfig, seed: int, train_fraction: float = 1.0,
                     progress: bool = True, hard_negatives: bool = False) -> TrainingData:
    pins, edges, splits = dataset.pins, dataset.edges, dataset.splits
    index = pins.index
    train_rows = training_subset(pins, splits, train_fraction, seed)
    val_rows = np.array(sorted(index[p] for p in splits.get("val_pins", []) if p in index), np.int64)
    if len(train_rows) < 2:
        raise UserError(f"only {len(train_rows)} training pins: nothing to train on")
    not_training = set(pins.pin_ids) - {pins.pin_ids[i] for i in train_rows}
    graph = BipartiteGraph.from_edges(
        pins.pin_ids, [pins.pin_ids[i] for i in edges.pin_index], [edges.board_ids[b] for b in edges.board_index],
        exclude_boards=set(splits.get("heldout_boards", [])), exclude_pins=not_training,
    )
    hard_ranks = graph_cfg.hard_ranks if hard_negatives else ()
    if hard_ranks and (len(hard_ranks) != 2 or not 0 <= hard_ranks[0] < hard_ranks[1]):
        raise UserError(f"graph.hard_ranks must be two ranks lo < hi, got {list(hard_ranks)}")
    depth = max(graph_cfg.top_k, hard_ranks[1] if hard_ranks else 0)
    mined = mine_neighbors(graph, RandomWalkConfig(
        num_walkers_per_pin=graph_cfg.walkers_per_pin, walk_length=graph_cfg.walk_length,
        restart_prob=graph_cfg.restart_prob, top_k=depth,
        board_degree_damping=graph_cfg.board_damping, seed=seed), progress=progress)
    neighbors, counts = mined.neighbors[:, : graph_cfg.top_k], mined.counts[:, : graph_cfg.top_k]
    hard = hard_candidates(graph, mined.neighbors, hard_ranks[0]) if hard_ranks \
        else np.full((len(pins), 0), -1, np.int64)
    incidence = sparse.csr_matrix((np.ones(graph.num_edges, np.float32), graph.pin_boards, graph.pin_indptr),
                                  shape=(graph.num_pins, max(graph.num_boards, 1)))
    title_of = dict(zip(edges.board_ids, edges.board_titles))
    titles = [(title_of.get(b) or "").strip() for b in (graph.board_ids or [])]
    return TrainingData(dataset, train_rows, val_rows, graph, neighbors, counts, mined.walk_steps,
                        duplicate_ids(pins, splits), incidence, sampling_log_q(train_rows, neighbors, counts, len(pins)),
                        hard, titles)


@dataclass
class Batch:
    rows: np.ndarray  # (N,) pin positions, rank blocks of [anchors; partners; hard]
    anchors: int  # anchor rows per rank (= partners per rank)
    extra: int  # hard-negative rows per rank
    has_neighbor: np.ndarray  # (world, anchors) bool: partner i is anchor i's graph neighbor
    same: np.ndarray  # (N, N) bool: the same pin, duplicate group or normalized text (i != j)
    share_board: np.ndarray  # (N, N) bool: share a training board (i != j)
    fused_keep: np.ndarray  # (N, F) bool: text fields the fused pass sees
    log_q: np.ndarray  # (N,) log sampling probability of each row's pin
    boards: np.ndarray  # (N, K) training boards (with a title) of each row whose titles join the batch, -1 padding
    canonical: np.ndarray  # (N,) each row's position in [all anchors; all partners; all hard]: per-row
    #                        randomness is drawn in that order, so it does not depend on the world size


def draw_partners(data: TrainingData, anchors: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(partners, has_neighbor) for anchors: a neighbor drawn by visit counts, else a random training pin."""
    partners = np.empty(len(anchors), np.int64)
    has_neighbor = np.zeros(len(anchors), bool)
    for i, a in enumerate(anchors):
        nb, cnt = data.neighbors[a], data.counts[a].astype(np.float64)
        valid = nb >= 0
        if valid.any():
            partners[i] = rng.choice(nb[valid], p=cnt[valid] / cnt[valid].sum())
            has_neighbor[i] = True
        else:
            partners[i] = rng.choice(data.train_rows)
    return partners, has_neighbor


def draw_hard(data: TrainingData, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A hard negative per anchor (a random training pin when it has no candidate)."""
    out = np.empty(len(anchors), np.int64)
    for i, a in enumerate(anchors):
        cands = data.hard[a][data.hard[a] >= 0] if data.hard.shape[1] else np.zeros(0, np.int64)
        out[i] = rng.choice(cands) if len(cands) else rng.choice(data.train_rows)
    return out


def fused_field_mask(num: int, cfg: BatchConfig, rng: np.random.Generator) -> np.ndarray:
    """(num, F) kept text fields of the fused pass: all text dropped with prob text_dropout, else the
    title alone with prob title_only, else each field dropped independently with prob field_dropout."""
    u = rng.random(num)
    keep = rng.random((num, len(TEXT_FIELDS))) >= cfg.field_dropout  # (num, F)
    title = TEXT_FIELDS.index("title")
    title_only = (u >= cfg.text_dropout) & (u < cfg.text_dropout + cfg.title_only)
    keep[title_only] = False
    keep[title_only, title] = True
    keep[u < cfg.text_dropout] = False
    return keep


def batch_at(data: TrainingData, step: int, cfg: BatchConfig, world: int = 1) -> Batch:
    """The global batch of step `step` laid out for `world` ranks (deterministic in (seed, step, world))."""
    half = cfg.batch_size // 2
    if half % world:
        raise ValueError(f"batch_size/2 = {half} is not divisible by the world size {world}")
    rows = data.train_rows
    per_epoch = max(len(rows) // half, 1)
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([cfg.seed, 1, epoch]).permutation(rows)
    anchors = np.resize(perm[pos * half:], half) if len(perm) >= half else perm[np.arange(half) % len(perm)]
    rng = np.random.default_rng([cfg.seed, 2, step])
    partners, has_neighbor = draw_partners(data, anchors, rng)
    hard = draw_hard(data, anchors, rng) if cfg.hard_negatives else np.zeros(0, np.int64)
    per, extra = half // world, len(hard) // world
    canonical = np.concatenate([anchors, partners, hard])  # (N,)
    position = np.concatenate([np.concatenate([np.arange(r * per, (r + 1) * per), half + np.arange(r * per, (r + 1) * per),
                                               2 * half + np.arange(r * extra, (r + 1) * extra)]) for r in range(world)])
    order = canonical[position]  # (N,) rank blocks of [anchors; partners; hard]
    keep = fused_field_mask(len(order), cfg, np.random.default_rng([cfg.seed, 3, step]))[position]
    boards = draw_boards(data, canonical, cfg.board_titles, np.random.default_rng([cfg.seed, 5, step]))[position]
    return Batch(order, per, extra, has_neighbor.reshape(world, per), same_mask(data, order),
                 share_board_mask(data, order), keep, data.log_q[order], boards, position)


def draw_boards(data: TrainingData, rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(N, k) up to k titled training boards of each row, drawn without replacement, -1 padding."""
    out = np.full((len(rows), k), -1, np.int64)
    for i, p in enumerate(rows.tolist()):
        titled = [b for b in data.graph.boards_of(p).tolist() if data.board_titles[b]]
        if titled and k:
            chosen = rng.choice(titled, size=min(k, len(titled)), replace=False)
            out[i, : len(chosen)] = chosen
    return out


def same_mask(data: TrainingData, rows: np.ndarray) -> np.ndarray:
    """(N, N) bool: rows i != j holding the same pin or duplicates of one another."""
    group = data.group[rows]
    same = group[:, None] == group[None, :]
    np.fill_diagonal(same, False)
    return same


def share_board_mask(data: TrainingData, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
    """(len(rows), len(cols)) bool: the pins share a training board (or are the same pin); the diagonal
    is False when cols is rows."""
    cols = rows if cols is None else cols
    shared = (data.incidence[rows] @ data.incidence[cols].T).toarray() > 0
    shared |= rows[:, None] == cols[None, :]
    if cols is rows:
        np.fill_diagonal(shared, False)
    return shared
