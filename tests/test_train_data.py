"""Training data never sees evaluation data: the training graph, the walks, the training pins and every
batch leave out held-out and validation boards and cold-start and validation pins (pinclip.train.dataset).

Each check is against the raw tables, read with pyarrow: the training graph must be exactly the edges
of warm pins to boards that are not held out, and a mined neighbor must be reachable within the walk
length in that graph."""

from __future__ import annotations

import dataclasses
import sys
from collections import deque

import numpy as np
import pyarrow.parquet as pq
import pytest
from scripted_rng import ScriptedRng
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
    # 63 training pins in 21 triples of one title: whole triples while they fit under 32 pins, so 10 of them
    assert len(half.train_rows) == 30 and np.isin(half.group, half.group[half.train_rows]).sum() == 30
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


# --- batches and the helpers behind them, on a hand-made catalog --------------------------------------------

HAND_PINS = {"a0": "red apple", "a1": "Red Apple!", "b0": "green pear", "b1": "yellow pear", "c0": None, "c1": None,
             "d0": "blue car", "e0": "cold thing"}
HAND_EDGES = [("a0", "F"), ("a1", "F"), ("b0", "F"), ("b1", "F"), ("b0", "P"), ("b1", "P"), ("c0", "X"), ("d0", "X"),
              ("b0", "G"), ("d0", "G"), ("a0", "H"), ("d0", "H"), ("e0", "C"), ("a0", "C")]
HAND_TITLES = {"F": "fruit", "P": "pears", "X": None, "G": "greens", "H": "held", "C": "cold board"}
HAND_SPLITS = {"seed": 0, "cold_start_pins": ["e0"], "val_pins": [], "heldout_boards": ["H"],
               "duplicate_groups": [["b0", "b1"]]}


def hand_dataset():
    """8 pins: a0/a1 share a normalized title, b0/b1 a duplicate group; c0, c1 have no text, c1 no board; d0's
    only titled boards are held out or untitled-free (G); e0 is cold; board H is held out, X has no title."""
    from pinclip.data.tables import EdgesTable, PinsTable
    from pinclip.train.dataset import Dataset

    ids = list(HAND_PINS)
    texts = {"title": list(HAND_PINS.values()), "description": [None] * 8, "caption": [None] * 8,
             "queries": [None] * 8, "annotations": [None] * 8}
    boards = list(HAND_TITLES)
    edges = EdgesTable("boards", np.array([ids.index(p) for p, _ in HAND_EDGES]),
                       np.array([boards.index(b) for _, b in HAND_EDGES]), boards, list(HAND_TITLES.values()))
    return Dataset(PinsTable("pins", ids, [None] * 8, texts), edges, dict(HAND_SPLITS))


@pytest.fixture  # per test, not per module: make mutants credits a shared fixture to the first test only
def hand():
    graph = GraphConfig(walkers_per_pin=50, walk_length=2, top_k=7, hard_ranks=(1, 7))
    return prepare_training(hand_dataset(), graph, seed=0, progress=False, hard_negatives=True)


def test_duplicates_join_normalized_titles_and_splits_groups_but_not_pins_without_text():
    from pinclip.train.dataset import duplicate_ids

    group = duplicate_ids(hand_dataset().pins, HAND_SPLITS)
    a0, a1, b0, b1, c0, c1, d0, e0 = group.tolist()
    assert a0 == a1 and b0 == b1 and len({a0, b0, c0, c1, d0, e0}) == 6


def test_hard_candidates_by_hand():
    from pinclip.graph.csr import BipartiteGraph
    from pinclip.train.dataset import hard_candidates

    # pins 0..3; boards: 0 = {0, 1}, 1 = {2}, 2 = {3}; pin 0 shares a board with 1 only
    graph = BipartiteGraph.from_arrays(np.array([0, 1, 2, 3]), np.array([0, 0, 1, 2]), 4, 3)
    ranked = np.array([[1, 2, 3], [0, 2, -1], [-1, -1, -1], [2, 0, 1]])
    assert hard_candidates(graph, ranked, 1).tolist() == [[2, 3], [2, -1], [-1, -1], [0, 1]]
    assert hard_candidates(graph, ranked, 0).tolist()[3] == [2, 0, 1]  # pin 0 is a candidate like any other


def test_partners_hard_negatives_and_board_titles_of_the_hand_catalog(hand):
    from pinclip.train.dataset import draw_boards, draw_hard, draw_partners

    ids = hand.dataset.pins.pin_ids
    rows = np.arange(7)  # every training pin (e0 is cold)
    partners, linked = draw_partners(hand, rows, np.random.default_rng(0))
    assert linked.dtype == bool and linked.tolist() == [True] * 5 + [False, True]  # c1 has no board
    assert ids[partners[5]] != "e0" and partners[5] in hand.train_rows  # a random training pin
    assert ids.index("d0") in hand.neighbors[ids.index("c0")]
    only_zero = np.full_like(hand.neighbors, -1)
    only_zero[1, 0] = 0  # a1's only neighbor is pin 0
    counts = np.zeros_like(hand.counts)
    counts[1, 0] = 3
    skewed = dataclasses.replace(hand, neighbors=only_zero, counts=counts)
    assert draw_partners(skewed, np.array([1]), np.random.default_rng(1)) == (np.array([0]), np.array([True]))
    two = np.full_like(hand.neighbors, -1)
    two[1, :2] = [2, 3]
    weights = np.zeros_like(hand.counts)
    weights[1, :2] = [9, 1]
    drawn, _ = draw_partners(dataclasses.replace(hand, neighbors=two, counts=weights), np.full(2000, 1),
                             np.random.default_rng(2))
    assert (drawn == 2).mean() == pytest.approx(0.9, abs=0.03)  # by visit counts
    hard = draw_hard(hand, rows, np.random.default_rng(3))
    for a, h in zip(rows, hard):
        cands = hand.hard[a][hand.hard[a] >= 0]
        assert h in cands if len(cands) else h in hand.train_rows
    assert (hand.hard >= 0).any()
    zero_hard = np.full_like(hand.hard, -1)
    zero_hard[2, 0] = 0
    assert draw_hard(dataclasses.replace(hand, hard=zero_hard), np.array([2]), np.random.default_rng(4)).tolist() == [0]
    no_hard = dataclasses.replace(hand, hard=np.zeros((8, 0), np.int64))
    random_rows = draw_hard(no_hard, np.zeros(200, np.int64), np.random.default_rng(5))
    assert set(random_rows.tolist()) == set(hand.train_rows.tolist())  # random training pins, all of them
    boards = draw_boards(hand, np.arange(8), 2, np.random.default_rng(6))
    names = [[hand.graph.board_ids[b] for b in row if b >= 0] for row in boards]
    assert names[ids.index("d0")] == ["G"] and boards[ids.index("c1")].tolist() == [-1, -1]  # X untitled, H held
    assert names[ids.index("c0")] == [] and sorted(names[ids.index("b0")]) != ["F", "F"]
    for row in names:
        assert len(row) == len(set(row))  # without replacement


def test_shared_boards_between_two_row_sets(hand):
    from pinclip.train.dataset import share_board_mask

    ids = hand.dataset.pins.pin_ids
    rows, cols = np.array([ids.index(p) for p in ("b0", "c0")]), np.array([ids.index(p) for p in ("d0", "a0", "b0")])
    assert share_board_mask(hand, rows, cols).tolist() == [[True, True, True], [True, False, False]]  # G; F; self
    square = share_board_mask(hand, rows)
    assert square.tolist() == [[False, False], [False, False]]  # b0 and c0 share nothing; the diagonal is off


def test_batch_layout_epochs_and_what_a_batch_carries(hand):
    cfg = BatchConfig(batch_size=4, seed=0, hard_negatives=True, board_titles=1)
    one = batch_at(hand, 0, cfg)  # one rank by default
    assert one.anchors == 2 and one.extra == 2 and one.canonical.tolist() == list(range(6))
    assert np.array_equal(one.log_q, hand.log_q[one.rows]) and one.boards.shape == (6, 1)
    again = batch_at(hand, 0, cfg)
    assert np.array_equal(again.boards, one.boards) and np.array_equal(again.rows, one.rows)
    epoch = [batch_at(hand, s, cfg).rows[:2].tolist() for s in range(3)]  # 7 pins, 2 anchors a step: 3 steps
    assert len({p for step in epoch for p in step}) == 6  # distinct anchors within the epoch
    two = batch_at(hand, 0, cfg, world=2)
    for r in range(2):  # each rank block is [anchor; partner; hard negative] of the same anchor
        a, _, h = two.rows[3 * r: 3 * r + 3]
        cands = hand.hard[a][hand.hard[a] >= 0]
        assert h in cands if len(cands) else h in hand.train_rows
    tiny = dataclasses.replace(hand, train_rows=hand.train_rows[:3])
    for step in range(3):  # fewer training pins than anchor slots: every pin once, then again
        anchors = batch_at(tiny, step, BatchConfig(batch_size=8)).rows[:4]
        assert sorted(set(anchors.tolist())) == sorted(tiny.train_rows.tolist())
    three = dataclasses.replace(hand, train_rows=hand.train_rows[:5])
    for step in range(4):  # 5 pins, 4 anchors: one step an epoch, 4 distinct pins each
        assert len(set(batch_at(three, step, BatchConfig(batch_size=8)).rows[:4].tolist())) == 4


# Batches are a pure function of (seed, step, world): a resumed run, even on an upgraded version, must see the
# batches it would have seen. Pinned on the hand catalog (numpy's PCG64 streams are stable).
PINNED = {"rows": [6, 0, 2, 1, 3, 5], "boards": [[2], [1], [2], [1], [3], [-1]],
          "keep": [[False, True, False, False, False], [False, False, True, False, True], [True, False, False, False, True],
                   [False, False, False, False, True], [False, False, False, True, False], [True, False, True, True, False]]}


def test_the_batches_of_a_seed_are_pinned(hand):
    batch = batch_at(hand, 1, BatchConfig(batch_size=4, seed=0, field_dropout=0.5, hard_negatives=True, board_titles=1))
    assert batch.rows.tolist() == PINNED["rows"]  # anchors, partners (by visit counts), hard negatives
    assert batch.fused_keep.tolist() == PINNED["keep"] and batch.boards.tolist() == PINNED["boards"]


# --- loading, preparing and batching, value by value ----------------------------------------------------------


def test_load_dataset_splits_default_to_nothing_held_out_and_images_are_only_checked_on_request(tmp_path):
    """load_dataset: without a splits.json nothing is held out (the four keys, seed 0); with one, its content;
    images are only checked for existence unless check_images; edges of a skipped or unknown pin are dropped."""
    import json

    import pyarrow as pa
    from PIL import Image

    (tmp_path / "bad.png").write_bytes(b"not a png")  # exists, but no image
    Image.new("RGB", (8, 8), "red").save(tmp_path / "good.png")  # one image of two fails: skipped, not fatal
    pins = [{"pin_id": "p0", "image": "bad.png", "title": "zero"}, {"pin_id": "p1", "image": "good.png", "title": "one"},
            {"pin_id": "p2", "image": None, "title": None}, {"pin_id": "p3", "image": None, "title": "three"}]
    pq.write_table(pa.Table.from_pylist(pins), tmp_path / "pins.parquet")
    edges = [("p0", "B1"), ("p1", "B1"), ("p2", "B1"), ("p3", "B2"), ("p9", "B2")]  # p2 skipped, p9 unknown
    pq.write_table(pa.Table.from_pylist([{"pin_id": p, "board_id": b, "board_title": f"title {b}"} for p, b in edges]),
                   tmp_path / "boards.parquet")
    splits = {"seed": 5, "cold_start_pins": ["p1"], "val_pins": ["p3"], "heldout_boards": ["B2"]}
    (tmp_path / "splits.json").write_text(json.dumps(splits))

    plain = load_dataset(tmp_path / "pins.parquet", tmp_path / "boards.parquet", None)
    assert plain.splits == {"seed": 0, "cold_start_pins": [], "val_pins": [], "heldout_boards": []}
    assert plain.pins.pin_ids == ["p0", "p1", "p3"] and plain.pins.images[0] == str(tmp_path / "bad.png")
    assert plain.edges.board_ids == ["B1", "B2"] and plain.edges.pin_index.tolist() == [0, 1, 2]  # p2, p9 dropped
    assert plain.edges.board_index.tolist() == [0, 0, 1]
    checked = load_dataset(tmp_path / "pins.parquet", tmp_path / "boards.parquet", None, check_images=True)
    assert checked.pins.pin_ids == ["p0", "p1", "p3"] and checked.pins.images[0] is None  # decoded: dropped
    assert checked.pins.images[1] == str(tmp_path / "good.png")
    with_splits = load_dataset(tmp_path / "pins.parquet", tmp_path / "boards.parquet", tmp_path / "splits.json")
    assert with_splits.splits == splits


def test_duplicate_ids_are_int64_ids_and_an_empty_table_has_none():
    """duplicate_ids returns int64 ids (one per duplicate set), also for a table without pins."""
    from pinclip.data.tables import PinsTable
    from pinclip.train.dataset import duplicate_ids

    group = duplicate_ids(hand_dataset().pins, HAND_SPLITS)
    assert group.dtype == np.int64 and group.tolist() == [0, 0, 1, 1, 2, 3, 4, 5]  # a0=a1 (text), b0=b1 (group)
    empty = duplicate_ids(PinsTable("none", [], [], {name: [] for name in hand_dataset().pins.texts}), {})
    assert empty.dtype == np.int64 and empty.tolist() == []


def test_sampling_log_q_by_hand():
    """log q of each pin: 1/N as an anchor plus its visit share of each training anchor's partners, over 2 slots;
    pins that never fill a slot get the 1e-12 floor. A neighbor at pin position 0 counts like any other."""
    from pinclip.train.dataset import sampling_log_q

    train_rows = np.array([0, 1, 2, 3])  # pin 4 does not train: its neighbor row is ignored
    neighbors = np.array([[1, 2], [0, -1], [-1, -1], [0, 1], [0, 1]])
    counts = np.array([[3, 1], [2, 0], [0, 0], [1, 1], [5, 5]], np.int32)
    # anchors: 1/4 each; partners: pin 0 (1/4 from pin 1, 1/8 from pin 3), pin 1 (3/16 + 1/8), pin 2 (1/16)
    q = np.array([1 / 4 + 1 / 4 + 1 / 8, 1 / 4 + 3 / 16 + 1 / 8, 1 / 4 + 1 / 16, 1 / 4, 0.0]) / 2
    expected = np.log(np.maximum(q, 1e-12))
    assert sampling_log_q(train_rows, neighbors, counts, 5) == pytest.approx(expected, rel=1e-12)


def test_hard_candidates_from_rank_zero_and_their_dtype():
    """From rank 0 every pin's whole ranking is filtered: board mates go, -1 pads, the result is int64."""
    from pinclip.graph.csr import BipartiteGraph
    from pinclip.train.dataset import hard_candidates

    graph = BipartiteGraph.from_arrays(np.array([0, 1, 2, 3]), np.array([0, 0, 1, 2]), 4, 3)  # as above
    ranked = np.array([[1, 2, 3], [0, 2, -1], [-1, -1, -1], [2, 0, 1]])
    out = hard_candidates(graph, ranked, 0)
    assert out.dtype == np.int64
    assert out.tolist() == [[2, 3, -1], [2, -1, -1], [-1, -1, -1], [2, 0, 1]]  # 0 and 1 share board 0


def test_draws_are_int64_pin_positions_and_board_titles_are_drawn_without_replacement(hand):
    """Partners and hard negatives are int64 pin positions; a row draws each of its titled boards at most
    once, so asking for all of them (or more) gives exactly them, padded with -1."""
    from pinclip.train.dataset import draw_boards, draw_hard, draw_partners

    ids = hand.dataset.pins.pin_ids
    partners, linked = draw_partners(hand, np.arange(7), np.random.default_rng(0))
    assert partners.dtype == np.int64 and linked.shape == (7,)
    hard = draw_hard(hand, np.arange(7), np.random.default_rng(0))
    assert hard.dtype == np.int64 and hard.shape == (7,)
    b0 = ids.index("b0")  # titled training boards F, P and G (H is held out)
    titled = sorted(hand.graph.board_ids.index(b) for b in ("F", "P", "G"))
    for k in (3, 5):
        boards = draw_boards(hand, np.full(20, b0), k, np.random.default_rng(k))
        assert boards.dtype == np.int64 and boards.shape == (20, k)
        for row in boards.tolist():
            assert sorted(row[:3]) == titled and row[3:] == [-1] * (k - 3)


def test_fused_field_mask_thresholds_are_half_open():
    """A probability p drops on draws in [0, p): p = 0 never drops, even on a draw of exactly 0.0; a row whose
    draw u is exactly text_dropout is title-only, exactly text_dropout + title_only keeps its fields."""
    from pinclip.train.dataset import fused_field_mask

    fields = len(hand_dataset().pins.texts)
    never = fused_field_mask(1, BatchConfig(), ScriptedRng([0.0], np.zeros((1, fields))))
    assert never.tolist() == [[True] * fields]
    cfg = BatchConfig(field_dropout=0.5, text_dropout=0.25, title_only=0.25)
    u = [0.25, 0.5, 0.0, 0.2499]  # title only, all fields, no text, no text
    keep = fused_field_mask(4, cfg, ScriptedRng(u, np.full((4, fields), 0.5)))  # field draws at 0.5: kept
    assert keep.dtype == bool
    assert keep.tolist() == [[True] + [False] * (fields - 1), [True] * fields, [False] * fields, [False] * fields]


def test_same_and_share_board_masks_of_a_batch_by_brute_force(hand):
    """same: rows i != j of one duplicate group (same pin, splits group, normalized text); share_board: rows
    i != j that share a training board or hold the same pin. Without hard negatives a batch is
    [anchors; partners] only."""
    from pinclip.train.dataset import same_mask

    ids = hand.dataset.pins.pin_ids
    rows = np.array([ids.index(p) for p in ("a0", "a1", "a0", "b0", "b1", "c0", "c1")])
    expected = [[i != j and hand.group[a] == hand.group[b] for j, b in enumerate(rows)] for i, a in enumerate(rows)]
    assert same_mask(hand, rows).tolist() == expected
    assert sum(map(sum, expected)) == 8  # a0/a1/a0 pairwise (6) and b0/b1 (2); c0, c1 have no text
    cfg = BatchConfig(batch_size=6, seed=1)
    for world in (1, 3):
        batch = batch_at(hand, 2, cfg, world)
        n = len(batch.rows)
        assert n == 6 and batch.extra == 0 and batch.anchors == 3 // world
        assert batch.has_neighbor.shape == (world, 3 // world)
        assert sorted(batch.canonical.tolist()) == list(range(6)) and batch.boards.shape == (6, 0)
        assert batch.fused_keep.shape == (6, 5) and batch.fused_keep.all()  # no dropout: all 5 text fields
        group, boards = hand.group[batch.rows], [set(hand.graph.boards_of(int(p)).tolist()) for p in batch.rows]
        assert batch.same.tolist() == [[i != j and group[i] == group[j] for j in range(n)] for i in range(n)]
        share = [[i != j and (batch.rows[i] == batch.rows[j] or bool(boards[i] & boards[j])) for j in range(n)]
                 for i in range(n)]
        assert batch.share_board.tolist() == share


def test_prepare_training_defaults_and_its_split_keys(hand, capsys, monkeypatch):
    """Without hard_negatives no hard candidates are mined; a walk progress bar is drawn unless progress=False;
    missing split keys hold nothing out; val_rows are the int64 positions of the validation pins."""
    graph = GraphConfig(walkers_per_pin=50, walk_length=2, top_k=7, hard_ranks=(1, 7))
    capsys.readouterr()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # progress bars are drawn on a terminal only
    plain = prepare_training(hand_dataset(), graph, seed=0)
    assert "random walks" in capsys.readouterr().err
    assert plain.hard.shape == (8, 0) and plain.hard.dtype == np.int64
    assert np.array_equal(plain.neighbors, hand.neighbors) and np.array_equal(plain.counts, hand.counts)
    prepare_training(hand_dataset(), graph, seed=0, progress=False)
    assert capsys.readouterr().err == ""
    assert hand.val_rows.dtype == np.int64 and hand.val_rows.tolist() == []
    bare = dataclasses.replace(hand_dataset(), splits={})
    everything = prepare_training(bare, graph, seed=0, progress=False)
    assert everything.train_rows.tolist() == list(range(8))  # e0 trains, board H is kept
    assert set(everything.graph.board_ids) == set(HAND_TITLES)
    val = dataclasses.replace(hand_dataset(), splits={**HAND_SPLITS, "val_pins": ["d0", "a1", "zz"]})  # zz unknown
    held = prepare_training(val, graph, seed=0, progress=False)
    assert held.val_rows.dtype == np.int64 and held.val_rows.tolist() == [1, 6]
    assert held.train_rows.tolist() == [0, 2, 3, 4, 5]


def test_train_fraction_keeps_a_seeded_subset_of_whole_duplicate_groups():
    """A share below 1 keeps whole duplicate groups ({a0, a1} by title, {b0, b1} by the splits, singletons) while
    they fit under round(N * share) pins (at least 2), the same ones for a seed (pinned); a share of 1 or more
    trains every pin; 2 training pins are enough, 1 is refused."""
    from pinclip.cli import UserError
    from pinclip.train.dataset import training_subset

    graph = GraphConfig(walkers_per_pin=20, walk_length=2, top_k=3)
    rows = {f: prepare_training(hand_dataset(), graph, seed=0, train_fraction=f, progress=False).train_rows.tolist()
            for f in (0.01, 0.5, 1.0, 1.5)}
    assert rows == {0.01: [0, 1], 0.5: [0, 1, 5, 6], 1.0: list(range(7)), 1.5: list(range(7))}  # 7 warm pins
    pins, splits = hand_dataset().pins, hand_dataset().splits
    assert training_subset(pins, splits, 0.5, seed=1).tolist() == [2, 3, 5, 6]  # b0 and b1 together
    one = dataclasses.replace(hand_dataset(), splits={**HAND_SPLITS, "cold_start_pins": list(HAND_PINS)[1:]})
    with pytest.raises(UserError, match="^only 1 training pins: nothing to train on$"):
        prepare_training(one, graph, seed=0, progress=False)


def test_hard_ranks_are_checked_and_mined_beyond_top_k():
    """graph.hard_ranks must be two ranks 0 <= lo < hi (only checked with hard negatives); the walks rank
    max(top_k, hi) pins so the hard candidates span ranks [lo, hi) even past top_k."""
    from pinclip.cli import UserError

    for ranks in [(5, 2), (3, 3), (-1, 4), (1, 2, 3), (4,)]:
        bad = GraphConfig(walkers_per_pin=20, walk_length=2, top_k=3, hard_ranks=ranks)
        message = rf"^graph.hard_ranks must be two ranks lo < hi, got \[{', '.join(map(str, ranks))}\]$"
        with pytest.raises(UserError, match=message):
            prepare_training(hand_dataset(), bad, seed=0, progress=False, hard_negatives=True)
        assert prepare_training(hand_dataset(), bad, seed=0, progress=False).hard.shape == (8, 0)  # not used
    wide = prepare_training(hand_dataset(), GraphConfig(walkers_per_pin=50, walk_length=2, top_k=2, hard_ranks=(0, 7)),
                            seed=0, progress=False, hard_negatives=True)
    assert wide.neighbors.shape == (8, 2) and wide.hard.shape == (8, 7)
    assert wide.hard[3].tolist() == [6] + [-1] * 6  # b1's ranking b0, a0, a1, d0: only d0 shares no board with it
    with pytest.raises(ValueError, match="^random walk: top_k must be >= 1, got 0$"):
        prepare_training(hand_dataset(), GraphConfig(top_k=0), seed=0, progress=False)


def test_the_walks_follow_the_graph_config_and_the_graph_has_its_incidence_and_titles():
    """Neighbors, counts and walk steps are those of mine_neighbors with every graph setting and the seed; the
    incidence matrix is the pin x training-board membership (at least one column); board titles follow the
    training boards, '' for an untitled one."""
    from pinclip.graph.random_walk import RandomWalkConfig, mine_neighbors

    cfg = GraphConfig(walkers_per_pin=9, walk_length=3, restart_prob=0.2, top_k=4, board_damping=1.5)
    data = prepare_training(hand_dataset(), cfg, seed=11, progress=False)
    mined = mine_neighbors(data.graph, RandomWalkConfig(num_walkers_per_pin=9, walk_length=3, restart_prob=0.2, top_k=4,
                                                        board_degree_damping=1.5, seed=11), progress=False)
    assert np.array_equal(data.neighbors, mined.neighbors) and np.array_equal(data.counts, mined.counts)
    assert data.walk_steps == mined.walk_steps == 6 * 9 * 3  # 6 warm pins with a training board
    boards = data.graph.board_ids
    assert boards == ["C", "F", "G", "P", "X"] and data.board_titles == ["cold board", "fruit", "greens", "pears", ""]
    member = [[b in data.graph.boards_of(p).tolist() for b in range(len(boards))] for p in range(8)]
    assert data.incidence.shape == (8, 5) and (data.incidence.toarray() == np.array(member, float)).all()
    one_board = dataclasses.replace(hand_dataset(), splits={**HAND_SPLITS, "heldout_boards": ["C", "G", "H", "P", "X"]})
    single = prepare_training(one_board, cfg, seed=0, progress=False)
    assert single.graph.board_ids == ["F"] and single.board_titles == ["fruit"] and single.incidence.shape == (8, 1)
    assert single.incidence.toarray()[:, 0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # a0, a1, b0, b1


def test_a_training_set_without_any_training_board_still_prepares_and_batches():
    """Every board held out: the training pins keep no edge, so no pin has a neighbor, partners are random
    training pins, no two rows share a board and no board title joins the batch."""
    no_boards = dataclasses.replace(hand_dataset(), splits={**HAND_SPLITS, "heldout_boards": list(HAND_TITLES)})
    data = prepare_training(no_boards, GraphConfig(walkers_per_pin=5, walk_length=2, top_k=3), seed=0, progress=False)
    assert data.graph.board_ids == [] and data.board_titles == [] and data.incidence.nnz == 0
    assert data.incidence.shape[0] == 8 and (data.neighbors == -1).all()
    assert np.exp(data.log_q[data.train_rows]) == pytest.approx([1 / 14] * 7)  # anchors only: 1/7 over 2 slots
    batch = batch_at(data, 0, BatchConfig(batch_size=4, board_titles=1))
    assert not batch.has_neighbor.any() and set(batch.rows.tolist()) <= set(data.train_rows.tolist())
    rows = batch.rows.tolist()
    assert batch.share_board.tolist() == [[i != j and rows[i] == rows[j] for j in range(4)] for i in range(4)]
    assert batch.boards.tolist() == [[-1]] * 4
