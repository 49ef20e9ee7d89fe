"""The Pin–Board bipartite graph in compressed sparse row form (docs/training.md, "The batch").

Two CSR views of the same deduplicated edge set: pin -> boards and board -> pins. Pin indices are
the rows of the pins table (every pin keeps its index, with or without edges), so anything mined
from the graph lines up with the table. `from_edges` builds the *training* graph from string ids:
held-out boards and held-out pins (cold-start, validation) are dropped, and every dropped edge is
counted in `dropped` so nothing disappears silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True, eq=False)
class BipartiteGraph:
    """Deduplicated pin–board edges as two CSR arrays.

    pin_indptr (P+1,) int64 and pin_boards (E,) int32: the boards of pin p are
    pin_boards[pin_indptr[p]:pin_indptr[p+1]], sorted. board_indptr / board_pins likewise.
    """

    num_pins: int
    num_boards: int
    pin_indptr: np.ndarray
    pin_boards: np.ndarray
    board_indptr: np.ndarray
    board_pins: np.ndarray
    board_ids: list[str] | None = None
    dropped: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_arrays(
        cls,
        pin_index: np.ndarray,
        board_index: np.ndarray,
        num_pins: int,
        num_boards: int,
        board_ids: list[str] | None = None,
    ) -> BipartiteGraph:
        """Build both CSR views from parallel edge arrays; duplicate edges are counted and dropped."""
        pin_index = np.asarray(pin_index, dtype=np.int64).ravel()
        board_index = np.asarray(board_index, dtype=np.int64).ravel()
        _check_edge_arrays(pin_index, board_index, num_pins, num_boards)
        keys = np.unique(pin_index * num_boards + board_index)  # sorted by (pin, board)
        pins, boards = keys // max(num_boards, 1), keys % max(num_boards, 1)
        index_dtype = np.int32 if max(num_pins, num_boards) < 2**31 else np.int64

        pin_indptr = _indptr(pins, num_pins)
        by_board = np.lexsort((pins, boards))  # (E,) edges ordered by (board, pin)
        board_indptr = _indptr(boards[by_board], num_boards)
        return cls(
            num_pins=int(num_pins),
            num_boards=int(num_boards),
            pin_indptr=pin_indptr,
            pin_boards=boards.astype(index_dtype),
            board_indptr=board_indptr,
            board_pins=pins[by_board].astype(index_dtype),
            board_ids=board_ids,
            dropped={"duplicate_edge": int(len(pin_index) - len(keys))},
        )

    @classmethod
    def from_edges(
        cls,
        pin_ids: Sequence[str],
        edge_pin_ids: Sequence[str],
        edge_board_ids: Sequence[str],
        exclude_boards: Iterable[str] = (),
        exclude_pins: Iterable[str] = (),
    ) -> BipartiteGraph:
        """The graph over the pins `pin_ids` (their order gives the pin indices) from string edges.

        Edges to excluded boards or excluded pins are dropped, and so are edges naming a pin that
        is not in `pin_ids`; each kind is counted in `dropped`. Board indices follow the sorted
        board ids that remain (kept in `board_ids`).
        """
        if len(edge_pin_ids) != len(edge_board_ids):
            raise ValueError(
                f"edge arrays differ in length: {len(edge_pin_ids)} pin ids, {len(edge_board_ids)} board ids"
            )
        pin_position = {pin_id: i for i, pin_id in enumerate(pin_ids)}
        if len(pin_position) != len(pin_ids):
            raise ValueError("pin_ids contains duplicates; pin ids must be unique")
        excluded_boards, excluded_pins = set(exclude_boards), set(exclude_pins)

        dropped = {"unknown_pin": 0, "excluded_pin": 0, "excluded_board": 0}
        kept_pins: list[int] = []
        kept_boards: list[str] = []
        for pin_id, board_id in zip(edge_pin_ids, edge_board_ids):
            if pin_id not in pin_position:
                dropped["unknown_pin"] += 1
            elif pin_id in excluded_pins:
                dropped["excluded_pin"] += 1
            elif board_id in excluded_boards:
                dropped["excluded_board"] += 1
            else:
                kept_pins.append(pin_position[pin_id])
                kept_boards.append(board_id)

        board_ids, board_index = np.unique(np.asarray(kept_boards, dtype=object), return_inverse=True)
        graph = cls.from_arrays(
            np.asarray(kept_pins, dtype=np.int64),
            board_index.astype(np.int64),
            num_pins=len(pin_ids),
            num_boards=len(board_ids),
            board_ids=[str(b) for b in board_ids],
        )
        return replace(graph, dropped={**dropped, **graph.dropped})

    @property
    def num_edges(self) -> int:
        return int(self.pin_boards.shape[0])

    def pin_degree(self) -> np.ndarray:
        """(P,) int64 number of boards of each pin."""
        return np.diff(self.pin_indptr)

    def board_degree(self) -> np.ndarray:
        """(num_boards,) int64 number of pins on each board."""
        return np.diff(self.board_indptr)

    def boards_of(self, pin: int) -> np.ndarray:
        return self.pin_boards[self.pin_indptr[pin] : self.pin_indptr[pin + 1]]

    def pins_of(self, board: int) -> np.ndarray:
        return self.board_pins[self.board_indptr[board] : self.board_indptr[board + 1]]


def _check_edge_arrays(
    pin_index: np.ndarray, board_index: np.ndarray, num_pins: int, num_boards: int
) -> None:
    if pin_index.shape != board_index.shape:
        raise ValueError(
            f"edge arrays differ in length: {pin_index.shape[0]} pin indices, {board_index.shape[0]} board indices"
        )
    for name, index, bound in (("pin", pin_index, num_pins), ("board", board_index, num_boards)):
        bad = np.flatnonzero((index < 0) | (index >= bound))
        if bad.size:
            raise ValueError(
                f"edge {bad[0]}: {name} index {index[bad[0]]} is outside [0, {bound}) ({bad.size} such edges)"
            )


def _indptr(sorted_rows: np.ndarray, num_rows: int) -> np.ndarray:
    """(num_rows+1,) int64 CSR row pointer for row indices that are already sorted."""
    counts = np.bincount(sorted_rows, minlength=num_rows)
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr
