"""Neighbor mining by random walks with restart on the Pin–Board graph (PinSage / Pixie style).

Every start pin launches `num_walkers_per_pin` walkers. At each of `walk_length` steps a walker
first jumps back to its start pin with probability `restart_prob`, then hops pin -> board -> pin:
the board is drawn among the pin's boards with probability proportional to
board_degree ** (-board_degree_damping) (0 = uniform; larger values keep giant boards from
dominating), the next pin uniformly among the board's pins. Every pin reached is a visit for the
start pin (the start pin itself is not counted); the `top_k` most visited pins are its neighbors,
ties going to the lower pin index.

The walk is vectorized: the Python loop runs over steps, and each step advances every walker of a
batch of start pins at once with NumPy. Memory is bounded by `batch_pins`. Results are a function
of the graph and every argument (seed and batch_pins included).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from pinclip.graph.csr import BipartiteGraph


@dataclass(frozen=True)
class RandomWalkConfig:
    num_walkers_per_pin: int = 100
    walk_length: int = 4  # pin -> board -> pin hops per walker
    restart_prob: float = 0.5
    top_k: int = 10
    board_degree_damping: float = 0.5  # alpha: board chosen with probability ∝ degree ** -alpha
    seed: int = 0
    batch_pins: int = 4096  # start pins walked together (bounds memory)

    def check(self) -> None:
        """Raise ValueError naming the first setting that is out of range."""
        for name in ("num_walkers_per_pin", "walk_length", "top_k", "batch_pins"):
            if getattr(self, name) < 1:
                raise ValueError(f"random walk: {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.restart_prob <= 1.0:
            raise ValueError(f"random walk: restart_prob must be in [0, 1], got {self.restart_prob}")
        if not np.isfinite(self.board_degree_damping):
            raise ValueError(
                f"random walk: board_degree_damping must be finite, got {self.board_degree_damping}"
            )


@dataclass(frozen=True, eq=False)
class MinedNeighbors:
    neighbors: np.ndarray  # (P, top_k) int64 pin indices, most visited first, -1 padding
    counts: np.ndarray  # (P, top_k) int32 visit counts, 0 padding
    walk_steps: int  # pin -> board -> pin hops taken, for steps/s figures


def mine_neighbors(graph: BipartiteGraph, config: RandomWalkConfig, progress: bool = True) -> MinedNeighbors:
    """Top-k most visited pins of every pin; pins without edges get a row of -1."""
    config.check()
    edge_keys = _board_choice_keys(graph, config.board_degree_damping)
    starts_all = np.flatnonzero(graph.pin_degree() > 0)
    neighbors = np.full((graph.num_pins, config.top_k), -1, dtype=np.int64)
    counts = np.zeros((graph.num_pins, config.top_k), dtype=np.int32)

    with tqdm(total=len(starts_all), unit="pin", desc="random walks", disable=not progress or None) as bar:
        for batch_no, lo in enumerate(range(0, len(starts_all), config.batch_pins)):
            starts = starts_all[lo : lo + config.batch_pins]
            rng = np.random.default_rng([config.seed, batch_no])
            slots, visited = _walk_batch(graph, edge_keys, starts, config, rng)
            neighbors[starts], counts[starts] = _top_k_visits(
                slots, visited, len(starts), config.top_k, graph.num_pins
            )
            bar.update(len(starts))
    walk_steps = len(starts_all) * config.num_walkers_per_pin * config.walk_length
    return MinedNeighbors(neighbors=neighbors, counts=counts, walk_steps=int(walk_steps))


def random_walk_neighbors(
    graph: BipartiteGraph,
    num_walkers_per_pin: int = 100,
    walk_length: int = 4,
    restart_prob: float = 0.5,
    top_k: int = 10,
    board_degree_damping: float = 0.5,
    seed: int = 0,
    batch_pins: int = 4096,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(neighbors (P, top_k) int64 with -1 padding, counts (P, top_k) int32); see `mine_neighbors`."""
    config = RandomWalkConfig(
        num_walkers_per_pin=num_walkers_per_pin,
        walk_length=walk_length,
        restart_prob=restart_prob,
        top_k=top_k,
        board_degree_damping=board_degree_damping,
        seed=seed,
        batch_pins=batch_pins,
    )
    mined = mine_neighbors(graph, config, progress=progress)
    return mined.neighbors, mined.counts


def _board_choice_keys(graph: BipartiteGraph, damping: float) -> np.ndarray:
    """(E,) float64 cumulative probability of each edge within its pin's segment of the CSR.

    An edge's weight is board_degree ** -damping, normalized over the pin's boards; the last edge
    of every pin gets exactly 1.0, so the first edge whose key exceeds u ~ U[0, 1) is a draw.
    """
    pin_degree = graph.pin_degree()
    if graph.num_edges == 0:
        return np.zeros(0, dtype=np.float64)
    nonempty = pin_degree > 0
    weights = graph.board_degree()[graph.pin_boards].astype(np.float64) ** (-damping)  # (E,)
    weights /= np.repeat(np.add.reduceat(weights, graph.pin_indptr[:-1][nonempty]), pin_degree[nonempty])
    keys = np.cumsum(weights)  # (E,) every pin's segment adds 1
    keys -= np.repeat(np.arange(nonempty.sum(), dtype=np.float64), pin_degree[nonempty])
    keys[graph.pin_indptr[1:][nonempty] - 1] = 1.0
    return keys


def _walk_batch(
    graph: BipartiteGraph,
    edge_keys: np.ndarray,
    starts: np.ndarray,
    config: RandomWalkConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """All walks of a batch of start pins: (start slot, visited pin) per visit, start pin excluded."""
    walkers = config.num_walkers_per_pin
    home = np.repeat(starts, walkers)  # (n*W,) start pin of each walker
    slot = np.repeat(np.arange(len(starts)), walkers)  # (n*W,) position of that start in the batch
    current = home.copy()
    visits = np.empty((config.walk_length, len(home)), dtype=np.int64)  # (L, n*W)
    for step in range(config.walk_length):
        restart = rng.random(len(home)) < config.restart_prob
        current = np.where(restart, home, current)
        boards = _draw_boards(graph, edge_keys, current, rng)
        current = _draw_pins(graph, boards, rng)
        visits[step] = current

    visited = visits.ravel()  # (L*n*W,) step-major
    slots = np.tile(slot, config.walk_length)
    not_home = visited != np.tile(home, config.walk_length)
    return slots[not_home], visited[not_home]


def _draw_boards(
    graph: BipartiteGraph, edge_keys: np.ndarray, pins: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(N,) one board for each pin of `pins` (all of which have edges).

    Bisection inside each pin's own CSR segment, all walkers at once: the first edge whose key
    exceeds u ~ U[0, 1). The last edge's key is 1.0, so the search never leaves the segment.
    """
    lo = graph.pin_indptr[pins]  # (N,)
    hi = graph.pin_indptr[pins + 1] - 1  # (N,)
    targets = rng.random(len(pins))  # (N,)
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        go_right = active & (edge_keys[mid] <= targets)
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    return graph.pin_boards[lo]


def _draw_pins(graph: BipartiteGraph, boards: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N,) one pin drawn uniformly from each board of `boards`."""
    lo = graph.board_indptr[boards]
    degree = graph.board_indptr[boards + 1] - lo
    offsets = np.minimum((rng.random(len(boards)) * degree).astype(np.int64), degree - 1)
    return graph.board_pins[lo + offsets].astype(np.int64)


def _top_k_visits(
    slots: np.ndarray, visited: np.ndarray, num_slots: int, top_k: int, num_pins: int
) -> tuple[np.ndarray, np.ndarray]:
    """(num_slots, top_k) most visited pins per slot and their counts; ties to the lower pin index."""
    pairs, pair_counts = np.unique(slots * num_pins + visited, return_counts=True)  # sorted (slot, pin)
    pair_slots, pair_pins = pairs // num_pins, pairs % num_pins
    max_count = int(pair_counts.max(initial=0))
    # slot ascending, then count descending; the stable sort keeps pins ascending within ties
    order = np.argsort(pair_slots * (max_count + 1) + (max_count - pair_counts), kind="stable")
    pair_slots, pair_pins, pair_counts = pair_slots[order], pair_pins[order], pair_counts[order]
    rank = np.arange(len(pair_slots)) - np.searchsorted(pair_slots, np.arange(num_slots))[pair_slots]
    keep = rank < top_k

    neighbors = np.full((num_slots, top_k), -1, dtype=np.int64)
    counts = np.zeros((num_slots, top_k), dtype=np.int32)
    neighbors[pair_slots[keep], rank[keep]] = pair_pins[keep]
    counts[pair_slots[keep], rank[keep]] = pair_counts[keep]
    return neighbors, counts
