"""Tests for the Pin–Board CSR graph and random-walk neighbor mining (pinclip.graph)."""

from __future__ import annotations

import numpy as np
import pytest

from pinclip.graph import BipartiteGraph, RandomWalkConfig, mine_neighbors, random_walk_neighbors
from pinclip.graph.random_walk import _top_k_visits


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
