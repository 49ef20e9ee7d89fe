"""Check a pins table and its board edges and summarize them (sizes, degrees, text coverage, images).

    pinclip data validate --pins pins.parquet --boards boards.parquet [--max-image-pixels N] [--no-image-check]

Prints the summary, the duplicate-group audit (pinclip.data.groups: shared group_id, identical
normalized text, near-duplicate images) and every problem line; the command exits 2 when a problem is fatal (see the
tables.py docstring for what is fatal and what is a reported skip), 0 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pinclip.data.schema import MAX_IMAGE_PIXELS, TEXT_FIELDS
from pinclip.data.tables import EdgesTable, PinsTable, Report, load_edges, load_pins


@dataclass
class DegreeStats:
    min: int
    median: float
    p90: float
    max: int

    def __str__(self) -> str:
        return f"min {self.min}, median {self.median:g}, p90 {self.p90:g}, max {self.max}"


@dataclass
class DatasetSummary:
    pins: int
    boards: int
    edges: int
    pins_without_board: int
    pin_degree: DegreeStats  # boards per pin, over all pins
    board_degree: DegreeStats  # pins per board
    text_coverage: dict[str, float]  # field -> share of pins where it is non-empty
    pins_with_image: int
    skipped: dict[str, int]  # kind ("image", "pin", "edge") -> count
    duplicates: list[str] = field(default_factory=list)  # the dedup audit (pinclip.data.groups)
    fatal: int = 0  # fatal problems (their rows are in no count above)


def degree_stats(degrees: np.ndarray) -> DegreeStats:
    """min / median / 90th percentile / max of a degree array (all zeros when empty)."""
    if len(degrees) == 0:
        return DegreeStats(0, 0.0, 0.0, 0)
    return DegreeStats(
        int(degrees.min()), float(np.median(degrees)), float(np.percentile(degrees, 90)), int(degrees.max())
    )


def summarize(pins: PinsTable, edges: EdgesTable, report: Report) -> DatasetSummary:
    """Counts and distributions of a loaded pins table and its edges."""
    pin_degree = np.bincount(edges.pin_index, minlength=len(pins))  # (N,)
    board_degree = np.bincount(edges.board_index, minlength=edges.num_boards)  # (B,)
    n = max(1, len(pins))
    coverage = {name: sum(1 for i in range(len(pins)) if pins.text(i, name)) / n for name in TEXT_FIELDS}
    return DatasetSummary(
        pins=len(pins),
        boards=edges.num_boards,
        edges=edges.num_edges,
        pins_without_board=int((pin_degree == 0).sum()),
        pin_degree=degree_stats(pin_degree),
        board_degree=degree_stats(board_degree),
        text_coverage=coverage,
        pins_with_image=sum(src is not None for src in pins.images),
        skipped=dict(report.skipped),
        fatal=sum(p.fatal for p in report.problems),
    )


def format_summary(summary: DatasetSummary) -> str:
    coverage = ", ".join(f"{name} {100 * share:.0f}%" for name, share in summary.text_coverage.items())
    skipped = summary.skipped
    return "\n".join(
        [
            f"pins: {summary.pins} ({skipped.get('pin', 0)} skipped)",
            f"boards: {summary.boards}, edges: {summary.edges} ({skipped.get('edge', 0)} skipped)",
            f"boards per pin: {summary.pin_degree}; pins in no board: {summary.pins_without_board}",
            f"pins per board: {summary.board_degree}",
            f"text coverage: {coverage}",
            f"images: {summary.pins_with_image} ok, {skipped.get('image', 0)} skipped, "
            f"{summary.pins - summary.pins_with_image} pins without image",
            *([f"fatal problems: {summary.fatal} (the rows they name are in no count above)"] if summary.fatal else []),
        ]
    )


def validate(
    pins_path: str, boards_path: str, max_image_pixels: int = MAX_IMAGE_PIXELS, check_images: bool = True
) -> tuple[DatasetSummary, Report]:
    """Load both tables with every check and audit duplicates; the report holds all problems of both."""
    from pinclip.data.groups import audit_lines, find_groups

    pins, report = load_pins(pins_path, max_image_pixels=max_image_pixels, check_images=check_images)
    if len(pins) == 0 and report.has_fatal:
        report.note(boards_path, None, None, "board edges not checked: no pin could be read")
        return summarize(pins, EdgesTable.empty(boards_path), report), report
    edges, edge_report = load_edges(boards_path, pins.pin_ids, pins.skipped_ids)
    report.extend(edge_report)
    summary = summarize(pins, edges, report)
    if len(pins):
        summary.duplicates = audit_lines(find_groups(pins, check_images=check_images), pins)
    return summary, report


def problem_lines(report: Report) -> list[str]:
    """'error: ...' for fatal problems, 'skipped: ...' or 'note: ...' for the others."""
    return [f"{problem.label}: {problem}" for problem in report.problems]
