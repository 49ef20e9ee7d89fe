"""Tests for the Pin–Board CSR graph and random-walk neighbor mining (pinclip.graph)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scripted_rng import ScriptedRng

import pinclip.graph.csr as csr_module
from pinclip.graph import BipartiteGraph, RandomWalkConfig, mine_neighbors, random_walk_neighbors
from pinclip.graph.random_walk import _board_choice_keys, _draw_boards, _draw_pins, _top_k_visits, _walk_batch


def walk(graph: BipartiteGraph, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    return random_walk_neighbors(graph, progress=False, **kwargs)


def test_csr_dedupes_edges_and_builds_both_views():
    # pins 0..2, boards 0..1; the edge (0, 1) appears twice
    graph = BipartiteGraph.from_arrays(
        np.array([0, 2, 0, 1, 0]), np.array([1, 1, 0, 1, 1]), num_pins=4, num_boards=2
    )
    assert graph.num_edges == 4
    assert graph.dropped["duplicate_edge"] == 1
    assert graph.pin_indptr.tolist() == [0, 2, 3, 4, 4]
    assert graph.pin_boards.tolist() == [0, 1, 1, 1]
    assert graph.board_indptr.tolist() == [0, 1, 4]
    assert graph.board_pins.tolist() == [0, 0, 1, 2]
    assert graph.pin_degree().tolist() == [2, 1, 1, 0]
    assert graph.board_degree().tolist() == [1, 3]
    assert graph.pins_of(1).tolist() == [0, 1, 2]
    assert graph.boards_of(3).tolist() == []


def test_from_arrays_rejects_out_of_range_index():
    with pytest.raises(ValueError, match=r"edge 1: board index 5 is outside \[0, 2\)"):
        BipartiteGraph.from_arrays(np.array([0, 1]), np.array([0, 5]), num_pins=2, num_boards=2)


def test_from_edges_maps_ids_and_counts_every_dropped_edge():
    pins = ["a", "b", "c", "cold"]
    edge_pins = ["a", "b", "c", "cold", "ghost", "a", "b"]
    edge_boards = ["x", "x", "y", "x", "x", "held", "x"]
    graph = BipartiteGraph.from_edges(
        pins, edge_pins, edge_boards, exclude_boards={"held"}, exclude_pins={"cold"}
    )
    assert graph.num_pins == 4
    assert graph.board_ids == ["x", "y"]
    assert graph.dropped == {"unknown_pin": 1, "excluded_pin": 1, "excluded_board": 1, "duplicate_edge": 1}
    assert graph.pins_of(0).tolist() == [0, 1]
    assert graph.pins_of(1).tolist() == [2]
    assert graph.boards_of(3).tolist() == []


def test_three_pins_two_boards_known_neighbors():
    # A and B share board X; C is alone on board Y.
    graph = BipartiteGraph.from_edges(["A", "B", "C"], ["A", "B", "C"], ["X", "X", "Y"])
    neighbors, counts = walk(graph, num_walkers_per_pin=100, walk_length=4, top_k=2)
    assert neighbors.tolist() == [[1, -1], [0, -1], [-1, -1]]
    # every hop from A or B lands on B or A with probability 1/2: Binomial(400, 1/2), sd 10
    assert 150 <= counts[0, 0] <= 250 and 150 <= counts[1, 0] <= 250
    assert counts[:, 1].tolist() == [0, 0, 0] and counts[2].tolist() == [0, 0]
    assert neighbors.dtype == np.int64


def test_pins_without_edges_get_no_neighbors_and_no_walk_steps():
    graph = BipartiteGraph.from_edges(
        ["A", "B", "cold"], ["A", "B", "cold"], ["X", "X", "X"], exclude_pins={"cold"}
    )
    mined = mine_neighbors(
        graph, RandomWalkConfig(num_walkers_per_pin=10, walk_length=3, top_k=3), progress=False
    )
    assert mined.neighbors[2].tolist() == [-1, -1, -1]
    assert mined.neighbors[0].tolist() == [1, -1, -1]
    assert mined.walk_steps == 2 * 10 * 3


def test_excluded_board_never_yields_neighbors():
    # A-B share board "held" only; A-C share "kept". Without "held", B is unreachable from A.
    graph = BipartiteGraph.from_edges(
        ["A", "B", "C"], ["A", "B", "A", "C"], ["held", "held", "kept", "kept"], exclude_boards={"held"}
    )
    neighbors, _ = walk(graph, num_walkers_per_pin=200, walk_length=6, top_k=3)
    assert neighbors.tolist() == [[2, -1, -1], [-1, -1, -1], [0, -1, -1]]


def random_graph(
    seed: int, num_pins: int = 300, num_boards: int = 60, num_edges: int = 900
) -> BipartiteGraph:
    rng = np.random.default_rng(seed)
    return BipartiteGraph.from_arrays(
        rng.integers(0, num_pins, num_edges), rng.integers(0, num_boards, num_edges), num_pins, num_boards
    )


def test_same_seed_same_result_other_seed_differs():
    graph = random_graph(0)
    first = walk(graph, num_walkers_per_pin=20, walk_length=3, seed=7, batch_pins=64)
    second = walk(graph, num_walkers_per_pin=20, walk_length=3, seed=7, batch_pins=64)
    other = walk(graph, num_walkers_per_pin=20, walk_length=3, seed=8, batch_pins=64)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not np.array_equal(first[1], other[1])


def test_one_hop_neighbors_share_a_board_and_exclude_the_start():
    graph = random_graph(1)
    neighbors, counts = walk(graph, num_walkers_per_pin=30, walk_length=1, top_k=5, batch_pins=50)
    for pin in range(graph.num_pins):
        boards = set(graph.boards_of(pin).tolist())
        for neighbor, count in zip(neighbors[pin], counts[pin]):
            if neighbor < 0:
                assert count == 0
                continue
            assert neighbor != pin and count > 0
            assert boards & set(graph.boards_of(neighbor).tolist())
        assert list(counts[pin]) == sorted(counts[pin], reverse=True)


def test_top_k_ranks_by_count_then_lower_pin():
    # slot 0 visits pin 5 twice, pin 3 twice, pin 9 once; slot 1 visits pin 4 once
    slots = np.array([0, 0, 0, 0, 0, 1])
    visited = np.array([5, 3, 9, 3, 5, 4])
    neighbors, counts = _top_k_visits(slots, visited, num_slots=3, top_k=2, num_pins=10)
    assert neighbors.tolist() == [[3, 5], [4, -1], [-1, -1]]
    assert counts.tolist() == [[2, 2], [1, 0], [0, 0]]


@pytest.mark.parametrize("damping", [0.0, 1.0])
def test_visit_frequencies_match_hand_computed_expectation(damping):
    # Pins 0..3; board X = {0, 1, 2}, board Y = {0, 3}. From pin 0, board X is chosen with
    # probability ∝ 3 ** -damping and Y with ∝ 2 ** -damping: 1/2 each at damping 0, 2/5 vs 3/5 at 1.
    graph = BipartiteGraph.from_arrays(np.array([0, 1, 2, 0, 3]), np.array([0, 0, 0, 1, 1]), 4, 2)
    p_x = {0.0: 1 / 2, 1.0: 2 / 5}[damping]
    hop = np.array(
        [
            p_x * np.array([1 / 3, 1 / 3, 1 / 3, 0]) + (1 - p_x) * np.array([1 / 2, 0, 0, 1 / 2]),
            [1 / 3, 1 / 3, 1 / 3, 0],
            [1 / 3, 1 / 3, 1 / 3, 0],
            [1 / 2, 0, 0, 1 / 2],
        ]
    )
    restart, length, walkers = 0.5, 3, 50_000
    start = np.array([1.0, 0, 0, 0])
    position, expected = start, np.zeros(4)
    for _ in range(length):  # restart to pin 0 with probability 1/2, then one hop
        position = (restart * start + (1 - restart) * position) @ hop
        expected += position
    neighbors, counts = walk(
        graph, num_walkers_per_pin=walkers, walk_length=length, restart_prob=restart,
        top_k=3, board_degree_damping=damping,
    )  # fmt: skip
    observed = np.zeros(4)
    observed[neighbors[0]] = counts[0] / walkers
    assert np.allclose(observed[1:], expected[1:], atol=0.015)
    assert observed[0] == 0


def test_invalid_settings_are_reported():
    graph = random_graph(2)
    with pytest.raises(ValueError, match="restart_prob must be in"):
        walk(graph, restart_prob=1.5)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        walk(graph, top_k=0)


def test_random_walk_neighbors_has_the_defaults_and_passes_every_setting_on():
    graph = random_graph(3, num_pins=5000, num_boards=500, num_edges=20000)  # more start pins than one batch
    assert (graph.pin_degree() > 0).sum() > 4097
    defaults = mine_neighbors(graph, RandomWalkConfig(), progress=False)
    neighbors, counts = random_walk_neighbors(graph, progress=False)
    assert np.array_equal(neighbors, defaults.neighbors) and np.array_equal(counts, defaults.counts)
    small = graph_of_3()
    config = RandomWalkConfig(num_walkers_per_pin=7, walk_length=2, restart_prob=0.3, top_k=2,
                              board_degree_damping=1.0, seed=5, batch_pins=1)
    mined = mine_neighbors(small, config, progress=False)
    neighbors, counts = random_walk_neighbors(small, 7, 2, 0.3, 2, 1.0, 5, 1, progress=False)
    assert np.array_equal(neighbors, mined.neighbors) and np.array_equal(counts, mined.counts)


def graph_of_3() -> BipartiteGraph:
    return BipartiteGraph.from_arrays(np.array([0, 1, 2, 0, 3]), np.array([0, 0, 0, 1, 1]), 4, 2)


# --- CSR construction: index dtypes, bounds, small edge cases ---------------------------------------------


def test_from_arrays_accepts_any_integer_index_dtype():
    """The edge arrays are cast to int64 before the (pin, board) keys are formed, so any integer dtype works.

    uint64 indices (e.g. from a hashing step) must not be promoted to float64 when mixed with int64, and
    int32 indices (the dtype of the graph's own arrays) must not overflow in pin * num_boards + board.
    """
    # the edges of test_csr_dedupes_edges_and_builds_both_views
    pins, boards = [0, 2, 0, 1, 0], [1, 1, 0, 1, 1]
    for dtype in (np.int32, np.uint32, np.int64, np.uint64):
        graph = BipartiteGraph.from_arrays(np.array(pins, dtype=dtype), np.array(boards, dtype=dtype), 4, 2)
        assert graph.pin_indptr.tolist() == [0, 2, 3, 4, 4], dtype
        assert graph.pin_boards.tolist() == [0, 1, 1, 1], dtype
        assert graph.board_pins.tolist() == [0, 0, 1, 2], dtype
    # 49_999 * 50_000 + 7 = 2_499_950_007 > 2**31 - 1: an int32 key would wrap around
    big = BipartiteGraph.from_arrays(
        np.array([49_999, 3], dtype=np.int32), np.array([7, 49_998], dtype=np.int32), 50_000, 50_000
    )
    assert big.boards_of(49_999).tolist() == [7] and big.boards_of(3).tolist() == [49_998]
    assert big.pins_of(7).tolist() == [49_999] and big.pins_of(49_998).tolist() == [3]


def test_csr_dtypes_sizes_and_brute_force_neighbourhoods():
    """Docstring dtypes (indptr int64, indices int32), num_pins / num_boards, and boards_of / pins_of of
    every pin and board equal the sorted set of its edges, computed in plain Python."""
    rng = np.random.default_rng(11)
    pin_index, board_index = rng.integers(0, 40, 150), rng.integers(0, 12, 150)
    # pins 40..42 and board 12 have no edges
    graph = BipartiteGraph.from_arrays(pin_index, board_index, num_pins=43, num_boards=13)
    assert (graph.num_pins, graph.num_boards) == (43, 13)
    assert graph.pin_indptr.dtype == np.int64 and graph.board_indptr.dtype == np.int64
    assert graph.pin_boards.dtype == np.int32 and graph.board_pins.dtype == np.int32
    edges = set(zip(pin_index.tolist(), board_index.tolist()))
    assert graph.num_edges == len(edges) and graph.dropped == {"duplicate_edge": 150 - len(edges)}
    for pin in range(43):
        assert graph.boards_of(pin).tolist() == sorted(b for p, b in edges if p == pin)
    for board in range(13):
        assert graph.pins_of(board).tolist() == sorted(p for p, b in edges if b == board)
    assert graph.pin_degree().tolist() == [len(graph.boards_of(p)) for p in range(43)]
    assert graph.board_degree().tolist() == [len(graph.pins_of(b)) for b in range(13)]


def test_index_dtype_widens_to_int64_from_2_pow_31_rows(monkeypatch):
    """pin_boards / board_pins are int32 while every index fits (< 2**31 pins and boards), int64 beyond.

    The (num_pins+1,) row pointer would take 16 GiB at 2**31 pins, so it is stubbed out: only the index
    dtype choice is checked here, on real edge arrays with the largest index that still fits int32.
    """
    monkeypatch.setattr(csr_module, "_indptr", lambda rows, num_rows: np.zeros(2, dtype=np.int64))
    fits = BipartiteGraph.from_arrays([0, 2**31 - 2], [0, 0], num_pins=2**31 - 1, num_boards=1)
    assert fits.pin_boards.dtype == np.int32 and fits.board_pins.dtype == np.int32
    assert fits.board_pins.tolist() == [0, 2**31 - 2]
    pins = BipartiteGraph.from_arrays([0, 2**31 - 1], [0, 0], num_pins=2**31, num_boards=1)
    assert pins.pin_boards.dtype == np.int64 and pins.board_pins.dtype == np.int64
    assert pins.board_pins.tolist() == [0, 2**31 - 1]
    boards = BipartiteGraph.from_arrays([0, 0], [2**31 - 1, 0], num_pins=1, num_boards=2**31)
    assert boards.pin_boards.dtype == np.int64 and boards.board_pins.dtype == np.int64
    assert boards.pin_boards.tolist() == [0, 2**31 - 1]


def test_single_board_and_edgeless_graphs():
    """num_boards = 1 (every key is the pin itself) and a graph without edges or boards."""
    one = BipartiteGraph.from_arrays(np.array([2, 0, 1, 2]), np.array([0, 0, 0, 0]), num_pins=4, num_boards=1)
    assert one.pin_indptr.tolist() == [0, 1, 2, 3, 3]
    assert one.pin_boards.tolist() == [0, 0, 0]
    assert one.board_indptr.tolist() == [0, 3] and one.board_pins.tolist() == [0, 1, 2]
    assert one.dropped == {"duplicate_edge": 1}
    empty = BipartiteGraph.from_arrays(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 3, 0)
    assert empty.pin_indptr.tolist() == [0, 0, 0, 0] and empty.board_indptr.tolist() == [0]
    assert empty.num_edges == 0 and empty.pin_degree().tolist() == [0, 0, 0]


def test_from_arrays_rejects_bad_edges_with_exact_messages():
    """Index == bound is outside [0, bound); the first bad edge and the number of bad edges are named."""
    with pytest.raises(ValueError, match=r"^edge 1: pin index 3 is outside \[0, 3\) \(2 such edges\)$"):
        BipartiteGraph.from_arrays(np.array([0, 3, 4]), np.array([0, 0, 0]), num_pins=3, num_boards=1)
    with pytest.raises(ValueError, match=r"^edge 0: board index 2 is outside \[0, 2\) \(1 such edges\)$"):
        BipartiteGraph.from_arrays(np.array([0, 1]), np.array([2, 1]), num_pins=2, num_boards=2)
    with pytest.raises(ValueError, match=r"^edge 1: board index -1 is outside \[0, 2\) \(1 such edges\)$"):
        BipartiteGraph.from_arrays(np.array([0, 1]), np.array([0, -1]), num_pins=2, num_boards=2)
    with pytest.raises(ValueError, match=r"^edge arrays differ in length: 2 pin indices, 1 board indices$"):
        BipartiteGraph.from_arrays(np.array([0, 1]), np.array([0]), num_pins=2, num_boards=2)


def test_from_edges_counts_repeated_drops_and_keeps_board_ids_verbatim():
    """Each dropped kind counts every edge (two of each here); board ids are compared as Python strings
    (an id with a trailing NUL is its own board: a fixed-width NumPy string array would strip it)."""
    graph = BipartiteGraph.from_edges(
        ["a", "b", "cold"],
        ["a", "ghost", "cold", "b", "ghost", "cold", "a", "b", "b"],
        ["x", "x", "x", "held", "y", "y", "held", "x\x00", "x"],
        exclude_boards=["held"], exclude_pins=["cold"],
    )  # fmt: skip
    assert graph.dropped == {"unknown_pin": 2, "excluded_pin": 2, "excluded_board": 2, "duplicate_edge": 0}
    assert graph.board_ids == ["x", "x\x00"] and graph.num_boards == 2
    assert graph.pins_of(0).tolist() == [0, 1] and graph.pins_of(1).tolist() == [1]
    with pytest.raises(ValueError, match=r"^edge arrays differ in length: 2 pin ids, 1 board ids$"):
        BipartiteGraph.from_edges(["a"], ["a", "a"], ["x"])
    with pytest.raises(ValueError, match=r"^pin_ids contains duplicates; pin ids must be unique$"):
        BipartiteGraph.from_edges(["a", "a"], ["a"], ["x"])


# --- random-walk internals, with hand-computed draws ------------------------------------------------------


def graph_of_5() -> BipartiteGraph:
    """Pins 0..4, boards 0..3: pin 0 on all four boards, pin 1 on none, pin 2 on {0, 2}, pin 3 on {1},
    pin 4 on {2, 3}. Board degrees 2, 2, 3, 2. Edges in pin CSR order: 0-3 pin 0, 4-5 pin 2, 6 pin 3,
    7-8 pin 4."""
    return BipartiteGraph.from_arrays(
        np.array([0, 0, 0, 0, 2, 2, 3, 4, 4]), np.array([0, 1, 2, 3, 0, 2, 1, 2, 3]), 5, 4
    )


def test_board_choice_keys_are_hand_computed_cumulative_probabilities():
    graph = graph_of_5()
    # damping 1: weight 1/degree. pin 0: 1/2, 1/2, 1/3, 1/2 (sum 11/6) -> 3/11, 3/11, 2/11, 3/11;
    # pin 2: 1/2, 1/3 -> 3/5, 2/5; pin 4: 1/3, 1/2 -> 2/5, 3/5; pin 3 has one board (key 1), pin 1 none
    keys = _board_choice_keys(graph, 1.0)
    assert keys.dtype == np.float64
    assert np.allclose(keys, [3 / 11, 6 / 11, 8 / 11, 1, 3 / 5, 1, 1, 2 / 5, 1], rtol=0, atol=1e-12)
    assert keys[[3, 5, 6, 8]].tolist() == [1.0, 1.0, 1.0, 1.0]  # the last edge of every pin is exactly 1
    # damping 0: uniform over the pin's boards
    assert _board_choice_keys(graph, 0.0).tolist() == [0.25, 0.5, 0.75, 1, 0.5, 1, 1, 0.5, 1]
    # damping 2: weight 1/degree**2. pin 2: 1/4, 1/9 -> 9/13, 4/13
    assert np.isclose(_board_choice_keys(graph, 2.0)[4], 9 / 13, rtol=0, atol=1e-12)
    single = BipartiteGraph.from_arrays(np.array([1]), np.array([0]), 2, 1)
    assert _board_choice_keys(single, 0.5).tolist() == [1.0]
    empty = BipartiteGraph.from_arrays(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 2, 1)
    none = _board_choice_keys(empty, 0.5)
    assert none.shape == (0,) and none.dtype == np.float64


def test_draw_boards_takes_the_first_edge_whose_key_exceeds_the_draw():
    """Bisection in each pin's own segment; a draw equal to a key goes past it (the key must *exceed* u)."""
    graph = graph_of_5()
    # keys (boards): pin 0: .25 .5 .75 1 (0, 1, 2, 3); pin 2: .5 1 (0, 2); pin 3: 1 (1); pin 4: .5 1 (2, 3)
    keys = _board_choice_keys(graph, 0.0)
    pins = np.array([0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 3, 4, 4, 4])
    u = [0.0, 0.25, 0.3, 0.5, 0.74, 0.75, 0.99, 0.999, 0.49, 0.5, 0.9, 0.1, 0.5, 0.7]
    boards = _draw_boards(graph, keys, pins, ScriptedRng(u))
    assert boards.tolist() == [0, 1, 1, 2, 2, 3, 3, 3, 0, 2, 1, 2, 3, 3]


def test_draw_pins_picks_the_floor_of_u_times_degree_on_the_board():
    graph = graph_of_5()  # board 0: pins 0, 2; board 1: 0, 3; board 2: 0, 2, 4; board 3: 0, 4
    boards = np.array([2, 2, 2, 0, 3, 1, 3])
    u = [0.0, 0.5, 0.99, 0.6, 0.49, 0.5, 0.999]  # offsets 0, 1 (1.5), 2 (2.97), 1 (1.2), 0 (.98), 1 (1.0), 1
    assert _draw_pins(graph, boards, ScriptedRng(u)).tolist() == [0, 2, 4, 2, 0, 3, 4]


def test_walk_batch_follows_hand_computed_walks():
    """Two start pins (0 and 3) of graph_of_3, two walkers each, two steps, every draw scripted.

    Per step: restart (u < 0.5 restarts), board, pin. Pin 0's keys are .5 (board X), 1 (Y); X = {0, 1, 2},
    Y = {0, 3}. Walkers: w0, w1 from pin 0 (slot 0); w2, w3 from pin 3 (slot 1).
    step 0: nobody away from home; boards X, Y, Y, Y; pins 1 (X, .5*3), 0 (Y, .1*2), 0, 3 (Y, .8*2)
    step 1: w0 draws exactly 0.5: no restart, stays on 1; w2 (on 0) restarts to 3; boards X, Y (.5 is not
            > .5), Y, Y; pins 2 (X, .9*3), 3 (Y, .6*2), 0 (Y, .4*2), 3 (Y, .7*2)
    visits step-major: 1, 0, 0, 3, 2, 3, 0, 3; visits of the walker's own start (0 for w1, 3 for w3)
    are dropped.
    """
    graph = graph_of_3()
    config = RandomWalkConfig(num_walkers_per_pin=2, walk_length=2, restart_prob=0.5)
    rng = ScriptedRng(
        [0.9, 0.1, 0.7, 0.2], [0.2, 0.7, 0.3, 0.9], [0.5, 0.1, 0.2, 0.8],
        [0.5, 0.6, 0.1, 0.99], [0.6, 0.5, 0.3, 0.4], [0.9, 0.6, 0.4, 0.7],
    )  # fmt: skip
    slots, visited = _walk_batch(graph, _board_choice_keys(graph, 0.0), np.array([0, 3]), config, rng)
    assert rng.draws == []
    assert slots.tolist() == [0, 1, 0, 0, 1]
    assert visited.tolist() == [1, 0, 2, 3, 0]
    assert visited.dtype == np.int64  # pin indices feed the int64 (slot, pin) keys of _top_k_visits


def test_top_k_matches_a_plain_python_ranking_with_many_ties():
    """Count descending, ties to the lower pin, per slot; checked against sorted() on a random visit list
    with many equal counts (an unstable sort would scramble the tied pins)."""
    rng = np.random.default_rng(5)
    num_slots, num_pins, top_k = 4, 60, 12
    slots, visited = rng.integers(0, num_slots, 900), rng.integers(0, num_pins, 900)
    neighbors, counts = _top_k_visits(slots, visited, num_slots, top_k, num_pins)
    assert neighbors.dtype == np.int64 and counts.dtype == np.int32  # the dtypes of MinedNeighbors
    for slot in range(num_slots):
        tally: dict[int, int] = {}
        for s, pin in zip(slots.tolist(), visited.tolist()):
            if s == slot:
                tally[pin] = tally.get(pin, 0) + 1
        ranked = sorted(tally.items(), key=lambda item: (-item[1], item[0]))[:top_k]
        assert neighbors[slot].tolist() == [pin for pin, _ in ranked]
        assert counts[slot].tolist() == [count for _, count in ranked]
    none_n, none_c = _top_k_visits(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 2, 3, 5)
    assert none_n.tolist() == [[-1, -1, -1]] * 2 and none_c.tolist() == [[0, 0, 0]] * 2


# --- mine_neighbors / random_walk_neighbors ----------------------------------------------------------------


def test_restart_prob_bounds_are_valid_and_mean_always_or_never():
    """restart_prob = 1: every step starts from home, so only pins one hop away are reached;
    restart_prob = 0: walkers wander, so A also reaches C (two hops away on the path A -X- B -Y- C)."""
    path = BipartiteGraph.from_edges(["A", "B", "C"], ["A", "B", "B", "C"], ["X", "X", "Y", "Y"])
    always, _ = walk(path, num_walkers_per_pin=50, walk_length=4, restart_prob=1.0, top_k=3)
    assert always.tolist() == [[1, -1, -1], [0, 2, -1], [1, -1, -1]]
    never, never_counts = walk(path, num_walkers_per_pin=50, walk_length=4, restart_prob=0.0, top_k=3)
    assert sorted(never[0].tolist()) == [-1, 1, 2] and sorted(never[2].tolist()) == [-1, 0, 1]
    assert never_counts.dtype == np.int32


def test_small_batches_lone_pins_and_edgeless_graphs():
    """batch_pins = 1 walks every start pin (each in its own batch); a batch with no visit at all (C alone
    on board Y) gives a -1 row; a graph without edges mines nothing. counts are int32 as documented."""
    graph = BipartiteGraph.from_edges(["A", "B", "C"], ["A", "B", "C"], ["X", "X", "Y"])
    config = RandomWalkConfig(num_walkers_per_pin=10, walk_length=2, top_k=2, batch_pins=1)
    mined = mine_neighbors(graph, config, progress=False)
    assert mined.neighbors.tolist() == [[1, -1], [0, -1], [-1, -1]]
    assert mined.counts.dtype == np.int32 and mined.counts[2].tolist() == [0, 0]
    assert mined.counts[0, 0] > 0 and mined.counts[1, 0] > 0
    assert mined.walk_steps == 3 * 10 * 2
    empty = BipartiteGraph.from_arrays(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 3, 0)
    nothing = mine_neighbors(empty, RandomWalkConfig(top_k=2), progress=False)
    assert nothing.neighbors.tolist() == [[-1, -1]] * 3 and nothing.counts.tolist() == [[0, 0]] * 3
    assert nothing.counts.dtype == np.int32 and nothing.walk_steps == 0


def test_progress_bar_is_shown_by_default_and_counts_start_pins(capsys, monkeypatch):
    """progress defaults to True in both entry points: on a terminal, a tqdm bar on stderr that ends at the
    number of start pins (pins with edges); progress=False prints nothing, and neither does a redirected
    stderr (no carriage-return bars in a log file)."""
    # graph_of_3 plus a pin 4 without edges: 4 start pins
    graph = BipartiteGraph.from_arrays(np.array([0, 1, 2, 0, 3]), np.array([0, 0, 0, 1, 1]), 5, 2)
    random_walk_neighbors(graph, num_walkers_per_pin=2, walk_length=1)
    assert capsys.readouterr().err == ""  # captured stderr is not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    random_walk_neighbors(graph, num_walkers_per_pin=2, walk_length=1)
    err = capsys.readouterr().err
    assert "random walks: 100%" in err and "4/4" in err
    mine_neighbors(graph, RandomWalkConfig(num_walkers_per_pin=2, walk_length=1))
    err = capsys.readouterr().err
    assert "random walks: 100%" in err and "4/4" in err
    random_walk_neighbors(graph, num_walkers_per_pin=2, walk_length=1, progress=False)
    mine_neighbors(graph, RandomWalkConfig(num_walkers_per_pin=2, walk_length=1), progress=False)
    assert capsys.readouterr().err == ""


def test_invalid_settings_are_named_in_the_message():
    graph = graph_of_3()
    for setting in ("num_walkers_per_pin", "walk_length", "top_k", "batch_pins"):
        with pytest.raises(ValueError, match=rf"^random walk: {setting} must be >= 1, got 0$"):
            walk(graph, **{setting: 0})
    with pytest.raises(ValueError, match=r"^random walk: restart_prob must be in \[0, 1\], got -0.1$"):
        walk(graph, restart_prob=-0.1)
    with pytest.raises(ValueError, match=r"^random walk: board_degree_damping must be finite, got nan$"):
        walk(graph, board_degree_damping=float("nan"))
