"""Training data never sees evaluation data: the training graph, the walks, the training pins and every
batch leave out held-out and validation boards and cold-start and validation pins (pinclip.train.dataset).

Each check is against the raw tables, read with pyarrow: the training graph must be exactly the edges
of warm pins to boards that are not held out, and a mined neighbor must be reachable within the walk
length in that graph."""

from __future__ import annotations

from collections import deque

import numpy as np
import pyarrow.parquet as pq
import pytest
from synthetic import COLORS, SHAPES

from pinclip.config import GraphConfig
from pinclip.train.dataset import BatchConfig, batch_at, load_dataset, load_dataset_dir, prepare_training

COLD = [("red", "square"), ("blue", "circle")]
VAL = [("yellow", "triangle")]
VAL_BOARDS = ["green-circle"]
HELDOUT = sorted(["shape-cross", "purple-square", *VAL_BOARDS])  # a whole shape board: warm pins lose it
WALK = GraphConfig(walkers_per_pin=32, walk_length=3, top_k=72, hard_ranks=(2, 72))  # top_k 72: every pin visited


def copies(pairs) -> list[str]:
    return [f"{c}-{s}-{k}" for c, s in pairs for k in range(3)]


SPLITS = {"seed": 0, "cold_start_pins": copies(COLD), "val_pins": copies(VAL), "heldout_boards": HELDOUT,
          "val_boards": VAL_BOARDS, "duplicate_groups": [copies([(c, s)]) for c in COLORS for s in SHAPES]}
HELD = set(SPLITS["cold_start_pins"]) | set(SPLITS["val_pins"])


@pytest.fixture  # per test, not per module: make mutants credits a shared fixture to the first test only
def dataset(catalog):
    dataset = load_dataset(catalog["pins"], catalog["boards"], None)
    dataset.splits = SPLITS
    return dataset


@pytest.fixture  # per test, not per module: make mutants credits a shared fixture to the first test only
def data(dataset):
    return prepare_training(dataset, WALK, seed=0, progress=False, hard_negatives=True)


@pytest.fixture(scope="module")
def raw_edges(catalog) -> list[tuple[str, str]]:
    return [(e["pin_id"], e["board_id"]) for e in pq.read_table(catalog["boards"]).to_pylist()]


def graph_edges(data) -> set[tuple[str, str]]:
    ids, graph = data.dataset.pins.pin_ids, data.graph
    return {(ids[p], graph.board_ids[b]) for p in range(graph.num_pins) for b in graph.boards_of(p).tolist()}


def hops(edges: set[tuple[str, str]], start: str) -> dict[str, int]:
    """Pin -> board -> pin hops from `start` to every pin reachable over `edges` (breadth first)."""
    boards_of: dict[str, set[str]] = {}
    pins_of: dict[str, set[str]] = {}
    for p, b in edges:
        boards_of.setdefault(p, set()).add(b)
        pins_of.setdefault(b, set()).add(p)
    dist, todo = {start: 0}, deque([start])
    while todo:
        p = todo.popleft()
        for b in boards_of.get(p, ()):
            for q in pins_of[b]:
                if q not in dist:
                    dist[q] = dist[p] + 1
                    todo.append(q)
    return dist


def assert_no_leak(data, edges: list[tuple[str, str]], walk_length: int) -> None:
    """The invariants of a training set against the raw edges and its splits."""
    splits = data.dataset.splits
    held = set(splits["cold_start_pins"]) | set(splits["val_pins"])
    held_boards = set(splits["heldout_boards"]) | set(splits.get("val_boards") or [])
    ids = data.dataset.pins.pin_ids
    training = {ids[i] for i in data.train_rows}
    assert not training & held
    expected = {(p, b) for p, b in edges if p in training and b not in held_boards}
    assert expected and graph_edges(data) == expected  # no held-out board, no pin that does not train
    for p in range(len(ids)):
        found = [ids[q] for q in data.neighbors[p][data.neighbors[p] >= 0]]
        hard = [ids[q] for q in data.hard[p][data.hard[p] >= 0]]
        if ids[p] not in training:
            assert not found and not hard, ids[p]  # a pin that does not train starts no walk
            continue
        reach = hops(expected, ids[p])
        assert all(q in training and 0 < reach.get(q, walk_length + 1) <= walk_length for q in found + hard), ids[p]


def test_the_training_graph_and_walks_leave_out_every_heldout_board_and_pin(data, raw_edges):
    ids = data.dataset.pins.pin_ids
    assert sorted(ids[i] for i in data.train_rows) == sorted(set(ids) - HELD)
    assert data.graph.dropped["excluded_board"] > 0 and data.graph.dropped["excluded_pin"] > 0
    assert_no_leak(data, raw_edges, WALK.walk_length)
    # not vacuous: a warm pin keeps its training boards and finds the mates of its color board
    red_circle = ids.index("red-circle-0")
    assert {data.graph.board_ids[b] for b in data.graph.boards_of(red_circle)} == {"color-red", "shape-circle",
                                                                                   "red-circle"}
    assert {"red-circle-1", "red-cross-0", "green-circle-0"} <= {ids[q] for q in data.neighbors[red_circle]}
    # shape-cross is held out: a warm cross reaches another cross only through its color board
    green_cross = ids.index("green-cross-0")
    assert {data.graph.board_ids[b] for b in data.graph.boards_of(green_cross)} == {"color-green", "green-cross"}


def test_heldout_pins_are_never_sampled(data):
    held = np.array([data.dataset.pins.index[p] for p in sorted(HELD)])
    assert np.all(data.log_q[held] == pytest.approx(np.log(1e-12)))  # the floor: probability zero
    assert np.exp(data.log_q[data.train_rows]).sum() == pytest.approx(1.0)


@pytest.mark.parametrize("world", [1, 2])
def test_no_batch_holds_a_heldout_pin_as_anchor_partner_or_hard_negative(data, world):
    cfg = BatchConfig(batch_size=16, seed=3, hard_negatives=True, board_titles=2)
    training = set(data.train_rows.tolist())
    seen: set[int] = set()
    for step in range(30):
        batch = batch_at(data, step, cfg, world)
        assert set(batch.rows.tolist()) <= training, step
        for row, boards in zip(batch.rows, batch.boards):  # board titles in the batch: the row's training boards
            assert set(boards[boards >= 0].tolist()) <= set(data.graph.boards_of(int(row)).tolist())
        seen |= set(batch.rows.tolist())
        per = batch.anchors + batch.anchors + batch.extra
        for r in range(world):
            block = batch.rows[r * per:(r + 1) * per]
            anchors, partners = block[: batch.anchors], block[batch.anchors: 2 * batch.anchors]
            for a, p, linked in zip(anchors, partners, batch.has_neighbor[r]):
                assert linked == bool((data.neighbors[a] >= 0).any())
                assert not linked or p in data.neighbors[a]  # a partner flagged as neighbor is one
    assert seen == training  # 30 steps of 8 anchors cover the 63 training pins


def test_a_share_of_the_training_pins_trains_alone(dataset, raw_edges):
    half = prepare_training(dataset, WALK, seed=0, train_fraction=0.5, progress=False)
    assert len(half.train_rows) == round(0.5 * (72 - len(HELD)))
    assert_no_leak(half, raw_edges, WALK.walk_length)
    training = set(half.train_rows.tolist())
    for step in range(10):
        assert set(batch_at(half, step, BatchConfig(batch_size=8)).rows.tolist()) <= training


@pytest.mark.slow  # builds or trains a model, or builds the demo corpus
def test_the_demo_corpus_split_does_not_leak(demo_corpus):
    dataset = load_dataset_dir(demo_corpus)
    splits = dataset.splits
    assert splits["val_boards"] and splits["cold_start_pins"] and splits["val_pins"]
    graph = GraphConfig(walkers_per_pin=8, walk_length=2, top_k=len(dataset.pins))
    data = prepare_training(dataset, graph, seed=0, progress=False)
    edges = list(zip([dataset.pins.pin_ids[i] for i in dataset.edges.pin_index],
                     [dataset.edges.board_ids[b] for b in dataset.edges.board_index]))
    assert_no_leak(data, edges, graph.walk_length)
