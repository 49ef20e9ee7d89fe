"""Reading pins tables and board edges in the documented format (schema.py) with precise problems.

    pins, report = load_pins("pins.parquet")
    edges, edge_report = load_edges("boards.parquet", pins.pin_ids, pins.skipped_ids)
    report.extend(edge_report); report.raise_if_fatal()

What is fatal (the input must be fixed; `pinclip data validate` exits 2) and what is a reported skip:
    fatal  missing pin_id / board_id column, a pins table with no image and no text column,
           a pin_id or board_id that is null or empty, a duplicate pin_id, a value of the wrong type
           more than half of the images given unusable (all of them, in a table of fewer than 10
           images): paths are most likely relative to another folder than the table's; a text-only
           catalog leaves the image column out (or empty) instead
           more than 5% of the edges naming a pin_id the pins table lacks (with the ids that differ
           only by case counted), a pins table that looks like board edges (--pins and --boards swapped)
    skip   an image that is missing, unreadable, corrupt or over the pixel guard (the image is
           dropped; the pin stays when it has text), a pin with neither image nor text, an edge
           whose pin is unknown or was skipped, a duplicate (pin_id, board_id) edge
    note   a board_id given two different board_titles (the first one is kept), a csv list cell
           holding commas but no '|' (read as one item: csv lists are a|b|c or a JSON list)
Unreadable files (wrong extension, missing, empty, a row that does not parse) raise UserError.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pinclip.cli import UserError
from pinclip.data.images import check_image
from pinclip.data.input_checks import check_image_failures, check_unknown_pins, note_comma_lists
from pinclip.data.schema import (
    EDGE_COLUMNS,
    LIST_FIELDS,
    MAX_IMAGE_PIXELS,
    OPTIONAL_EDGE_COLUMNS,
    PIN_COLUMNS,
    TABLE_SUFFIXES,
    TEXT_FIELDS,
    field_text,
)

__all__ = ["EdgesTable", "PinsTable", "Problem", "Report", "load_edges", "load_pins", "read_table"]
EDGE_KNOWN = (*EDGE_COLUMNS, *OPTIONAL_EDGE_COLUMNS)


@dataclass
class Problem:
    """One finding about the input: where (file, 1-based data row, column) and what."""

    file: str
    row: int | None
    column: str | None
    message: str
    fatal: bool
    skipped: str | None = None  # what was skipped because of it: "image", "pin" or "edge"

    @property
    def label(self) -> str:
        return "error" if self.fatal else ("skipped" if self.skipped else "note")

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f" row {self.row}"
        if self.column is not None:
            where += f", column '{self.column}'"
        return f"{where}: {self.message}"


@dataclass
class Report:
    """All problems found while loading, and how many things of each kind were skipped."""

    problems: list[Problem] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # kind ("image", "pin", "edge") -> count

    def fatal(self, file: str, row: int | None, column: str | None, message: str) -> None:
        self.problems.append(Problem(file, row, column, message, fatal=True))

    def skip(self, kind: str, file: str, row: int | None, column: str | None, message: str) -> None:
        self.problems.append(Problem(file, row, column, message, fatal=False, skipped=kind))
        self.skipped[kind] += 1

    def note(self, file: str, row: int | None, column: str | None, message: str) -> None:
        self.problems.append(Problem(file, row, column, message, fatal=False))

    def extend(self, other: Report) -> None:
        self.problems += other.problems
        self.skipped.update(other.skipped)

    @property
    def has_fatal(self) -> bool:
        return any(p.fatal for p in self.problems)

    def raise_if_fatal(self, limit: int = 10) -> None:
        """UserError listing the first `limit` fatal problems, if there is any."""
        fatal = [str(p) for p in self.problems if p.fatal]
        if fatal:
            more = f"\n  ... and {len(fatal) - limit} more" if len(fatal) > limit else ""
            raise UserError("invalid input:\n  " + "\n  ".join(fatal[:limit]) + more)


@dataclass
class Records:
    """A table file read as plain Python rows (csv cells are strings, empty cells None)."""

    path: str
    columns: list[str]
    rows: list[dict]

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def is_csv(self) -> bool:
        return self.path.lower().endswith(".csv")


def _checked_suffix(path: str) -> str:
    name = os.path.basename(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in TABLE_SUFFIXES:
        raise UserError(
            f"{name}: unsupported file type '{suffix or '(none)'}' (use {', '.join(TABLE_SUFFIXES)})"
        )
    if not os.path.isfile(path):
        raise UserError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise UserError(f"{name}: file is empty")
    return suffix


def _read_parquet(path: str) -> Records:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"{os.path.basename(path)}: not a readable parquet file ({err})") from None
    return Records(path, table.column_names, table.to_pylist())


def _read_jsonl(path: str) -> Records:
    name, rows, columns = os.path.basename(path), [], {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(
                    f"{name} row {len(rows) + 1} (line {line_no}): not valid JSON ({err.msg})"
                ) from None
            if not isinstance(row, dict):
                raise UserError(
                    f"{name} row {len(rows) + 1} (line {line_no}): expected a JSON object, got {type(row).__name__}"
                )
            columns.update(dict.fromkeys(row))
            rows.append(row)
    return Records(path, list(columns), rows)


def _read_csv(path: str) -> Records:
    name = os.path.basename(path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        rows: list[dict] = []
        try:
            header = [c.strip() for c in next(reader, [])]
            for cells in reader:
                if len(cells) != len(header):
                    raise UserError(
                        f"{name} row {len(rows) + 1}: {len(cells)} fields, the header has {len(header)}"
                    )
                rows.append({c: (v if v != "" else None) for c, v in zip(header, cells)})
        except csv.Error as err:
            raise UserError(f"{name} row {len(rows) + 1}: not parsable as CSV ({err})") from None
    return Records(path, header, rows)


def read_records(path: str) -> Records:
    """Rows of a .parquet/.jsonl/.csv table; UserError for a wrong, missing, empty or unparsable file."""
    path = str(path)
    suffix = _checked_suffix(path)
    try:
        reader = {".parquet": _read_parquet, ".jsonl": _read_jsonl, ".csv": _read_csv}[suffix]
        records = reader(path)
    except UnicodeDecodeError as err:
        raise UserError(
            f"{os.path.basename(path)}: not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    if not records.rows:
        raise UserError(f"{records.name}: no data rows")
    return records


def _mixed_type_error(records: Records, column: str) -> UserError:
    values = [rec.get(column) for rec in records.rows]
    first = next(type(v) for v in values if v is not None)
    row = next(i for i, v in enumerate(values, start=1) if v is not None and type(v) is not first)
    found = type(values[row - 1]).__name__
    return UserError(
        f"{records.name} row {row}, column '{column}': got {found}, earlier rows hold {first.__name__}"
    )


def read_table(path: str) -> pa.Table:
    """The raw table of a .parquet/.jsonl/.csv file (csv cells stay strings); checked by load_pins/edges."""
    records = read_records(path)
    if path.lower().endswith(".parquet"):
        return pq.read_table(path)
    arrays = {}
    for column in records.columns:
        try:
            arrays[column] = pa.array([rec.get(column) for rec in records.rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            raise _mixed_type_error(records, column) from None
    return pa.table(arrays)


@dataclass
class PinsTable:
    """Pins in memory, one list entry per pin; images are absolute paths, bytes or None."""

    path: str
    pin_ids: list[str]
    images: list[str | bytes | None]
    texts: dict[str, list]  # field -> per-pin value: str | None (string fields), list[str] | None (lists)
    extra: dict[str, list] = field(default_factory=dict)  # other columns, kept as read
    skipped_ids: set[str] = field(default_factory=set)  # pins dropped while loading (see the report)

    def __len__(self) -> int:
        return len(self.pin_ids)

    @cached_property
    def index(self) -> dict[str, int]:
        """pin_id -> row position."""
        return {pin_id: i for i, pin_id in enumerate(self.pin_ids)}

    def text(self, i: int, name: str) -> str:
        """One string for text field `name` of pin `i` ('' when absent)."""
        return field_text(self.texts[name][i])

    def subset(self, rows: Sequence[int]) -> PinsTable:
        """The pins at positions `rows`, in that order."""
        pick = lambda values: [values[i] for i in rows]  # noqa: E731
        return PinsTable(
            path=self.path,
            pin_ids=pick(self.pin_ids),
            images=pick(self.images),
            texts={name: pick(values) for name, values in self.texts.items()},
            extra={name: pick(values) for name, values in self.extra.items()},
        )


@dataclass
class EdgesTable:
    """The pin-board bipartite graph: edge e links pin `pin_index[e]` to board `board_index[e]`."""

    path: str
    pin_index: np.ndarray  # (E,) int64, positions in the pins table
    board_index: np.ndarray  # (E,) int64, positions in board_ids
    board_ids: list[str]  # one per board, in order of first appearance
    board_titles: list[str | None]  # one per board
    extra: dict[str, list] = field(default_factory=dict)  # other columns, one value per edge

    @classmethod
    def empty(cls, path: str) -> EdgesTable:
        return cls(os.path.abspath(path), np.zeros(0, np.int64), np.zeros(0, np.int64), [], [])

    @property
    def num_edges(self) -> int:
        return len(self.pin_index)

    @property
    def num_boards(self) -> int:
        return len(self.board_ids)

    def board_members(self) -> list[np.ndarray]:
        """For each board, the sorted pin positions it holds."""
        order = np.lexsort((self.pin_index, self.board_index))
        counts = np.bincount(self.board_index, minlength=self.num_boards)
        return np.split(self.pin_index[order], np.cumsum(counts)[:-1])


def _type_name(value: object) -> str:
    return type(value).__name__


def _is_string(value: object) -> str | None:
    """None when `value` is a string or null, else what was found instead."""
    return None if value is None or isinstance(value, str) else _type_name(value)


def _is_string_list(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, _BadJsonCell):
        return "a cell that starts with '[' but is not valid JSON"
    if not isinstance(value, list | tuple):
        return _type_name(value)
    bad = [v for v in value if not isinstance(v, str)]
    return f"a list containing {_type_name(bad[0])}" if bad else None


def _is_image(value: object) -> str | None:
    return None if value is None or isinstance(value, str | bytes | bytearray) else _type_name(value)


def _is_id(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return None
    return "null" if value is None else ("an empty string" if isinstance(value, str) else _type_name(value))


class _BadJsonCell(str):
    """A csv list cell that starts like a JSON list but does not parse."""


def _csv_list(value: object) -> object:
    """A csv cell of a list field: a JSON list, or values separated by '|'."""
    if not isinstance(value, str):
        return value
    if not value.lstrip().startswith("["):
        return value.split("|")
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return _BadJsonCell(value)


CHECKS = {  # column kind -> (check, what was expected)
    "id": (_is_id, "a non-empty string"),
    "string": (_is_string, "a string"),
    "list": (_is_string_list, "a list of strings"),
    "image": (_is_image, "a path string or image bytes"),
}


def _column(records: Records, column: str, kind: str, report: Report) -> list:
    """A column's values, each wrong-typed one reported as fatal and replaced by None."""
    values = [rec.get(column) for rec in records.rows]
    if kind == "list" and records.is_csv:
        note_comma_lists(records, column, values, report)
        values = [_csv_list(v) for v in values]
    check, expected = CHECKS[kind]
    for row, value in enumerate(values, start=1):
        found = check(value)
        if found is not None:
            report.fatal(records.name, row, column, f"expected {expected}, got {found}")
            values[row - 1] = None
    return values


def _clean_text(value: str | list | None) -> str | list[str] | None:
    """Stripped text; blank strings and blank list items dropped; empty results become None."""
    if isinstance(value, list | tuple):
        return [v.strip() for v in value if v.strip()] or None
    return (value or "").strip() or None


def _check_duplicates(records: Records, ids: list[str | None], report: Report) -> None:
    first_row: dict[str, int] = {}
    for row, pin_id in enumerate(ids, start=1):
        if pin_id is not None and pin_id in first_row:
            message = f"duplicate pin_id '{pin_id}' (first seen in row {first_row[pin_id]})"
            report.fatal(records.name, row, "pin_id", message)
        elif pin_id is not None:
            first_row[pin_id] = row


def _resolve_image(value: str | bytes | None, table_dir: str) -> str | bytes | None:
    """Bytes as they are; a path made absolute relative to the table's folder; blanks None."""
    if isinstance(value, bytes | bytearray):
        return bytes(value) or None
    text = (value or "").strip()
    return os.path.normpath(os.path.join(table_dir, text)) if text else None


def _drop_bad_images(
    records: Records, images: list, max_pixels: int, check_images: bool, report: Report
) -> None:
    """Replace unusable images by None, reporting each (only file existence unless check_images)."""
    todo = [i for i, src in enumerate(images) if src is not None]
    bar = tqdm(todo, desc=f"checking images of {records.name}", unit="img", disable=not check_images or None)
    for i in bar:
        src = images[i]
        if check_images:
            reason = check_image(src, max_pixels)
        else:
            reason = None if isinstance(src, bytes) or os.path.isfile(src) else "file not found"
        if reason is not None:
            where = f" ({src})" if isinstance(src, str) else ""
            report.skip("image", records.name, i + 1, "image", f"image dropped: {reason}{where}")
            images[i] = None


def _missing_column(records: Records, column: str, report: Report) -> bool:
    if column in records.columns:
        return False
    message = f"missing required column '{column}' (columns: {', '.join(records.columns)})"
    report.fatal(records.name, None, column, message)
    return True


def load_pins(
    path: str, max_image_pixels: int = MAX_IMAGE_PIXELS, check_images: bool = True
) -> tuple[PinsTable, Report]:
    """Read and check a pins table; the report lists every fatal problem and every skip."""
    records, report = read_records(path), Report()
    if _missing_column(records, "pin_id", report):
        return PinsTable(os.path.abspath(path), [], [], {name: [] for name in TEXT_FIELDS}), report
    if "image" not in records.columns and not set(TEXT_FIELDS) & set(records.columns):
        swapped = " (it has a board_id column: were --pins and --boards swapped?)" if "board_id" in records.columns \
            else ""
        report.fatal(
            records.name, None, None, f"no 'image' column and no text column ({', '.join(TEXT_FIELDS)}){swapped}"
        )
    ids = [v.strip() if v else None for v in _column(records, "pin_id", "id", report)]
    _check_duplicates(records, ids, report)
    kinds = {name: "list" if name in LIST_FIELDS else "string" for name in TEXT_FIELDS}
    texts = {
        name: [_clean_text(v) for v in _column(records, name, kind, report)] for name, kind in kinds.items()
    }
    table_dir = os.path.dirname(os.path.abspath(path))
    images = [_resolve_image(v, table_dir) for v in _column(records, "image", "image", report)]
    given = sum(src is not None for src in images)
    _drop_bad_images(records, images, max_image_pixels, check_images, report)
    check_image_failures(records, given, given - sum(src is not None for src in images), table_dir, report)
    invalid_rows = {p.row for p in report.problems if p.fatal}
    keep, skipped = [], set()
    for i, pin_id in enumerate(ids):
        if pin_id is None or i + 1 in invalid_rows:
            continue  # already reported as fatal
        if images[i] is None and not any(texts[name][i] for name in TEXT_FIELDS):
            report.skip(
                "pin", records.name, i + 1, None, f"pin '{pin_id}' skipped: no usable image and no text"
            )
            skipped.add(pin_id)
        else:
            keep.append(i)
    pick = lambda values: [values[i] for i in keep]  # noqa: E731
    extra = {c: pick([rec.get(c) for rec in records.rows]) for c in records.columns if c not in PIN_COLUMNS}
    texts = {name: pick(values) for name, values in texts.items()}
    return PinsTable(os.path.abspath(path), pick(ids), pick(images), texts, extra, skipped), report


def load_edges(
    path: str, pin_ids: Sequence[str], skipped_pin_ids: Collection[str] = ()
) -> tuple[EdgesTable, Report]:
    """Read and check board edges against the loaded pins; dangling and duplicate edges are skipped."""
    records, report = read_records(path), Report()
    if _missing_column(records, "pin_id", report) or _missing_column(records, "board_id", report):
        if {"image", *TEXT_FIELDS} & set(records.columns):
            report.fatal(records.name, None, None, "this looks like a pins table (it has image or text columns): "
                         "were --pins and --boards swapped?")
        return EdgesTable.empty(path), report
    pins = _column(records, "pin_id", "id", report)
    boards = _column(records, "board_id", "id", report)
    titles = [_clean_text(v) for v in _column(records, "board_title", "string", report)]
    index = {pin_id: i for i, pin_id in enumerate(pin_ids)}
    board_pos: dict[str, int] = {}
    board_titles: list[str | None] = []
    kept: dict[tuple[int, int], int] = {}  # (pin, board) -> row position
    by_case = {pin_id.casefold(): pin_id for pin_id in pin_ids}
    unknown, case_only = 0, []
    for row, (pin_id, board_id, title) in enumerate(zip(pins, boards, titles), start=1):
        if pin_id is None or board_id is None:
            continue
        pin_id, board_id = pin_id.strip(), board_id.strip()
        if pin_id not in index:
            why = "was skipped when loading the pins" if pin_id in skipped_pin_ids else "is not in the pins table"
            if pin_id not in skipped_pin_ids:
                unknown += 1
                if pin_id.casefold() in by_case:
                    case_only.append((pin_id, by_case[pin_id.casefold()]))
                    why += f" (it has '{by_case[pin_id.casefold()]}': ids are case-sensitive)"
            report.skip("edge", records.name, row, "pin_id", f"edge skipped: pin_id '{pin_id}' {why}")
            continue
        b = board_pos.setdefault(board_id, len(board_pos))
        if b == len(board_titles):
            board_titles.append(title)
        elif title is not None and board_titles[b] is not None and title != board_titles[b]:
            message = f"board '{board_id}' has another title '{title}'; kept '{board_titles[b]}'"
            report.note(records.name, row, "board_title", message)
        if (index[pin_id], b) in kept:
            message = f"edge skipped: duplicate of pin '{pin_id}' in board '{board_id}'"
            report.skip("edge", records.name, row, None, message)
            continue
        kept[(index[pin_id], b)] = row - 1
    check_unknown_pins(records, unknown, case_only, report)
    rows = list(kept.values())
    extra = {c: [records.rows[r].get(c) for r in rows] for c in records.columns if c not in EDGE_KNOWN}
    pin_index = np.fromiter((p for p, _ in kept), np.int64, len(kept))  # (E,)
    board_index = np.fromiter((b for _, b in kept), np.int64, len(kept))  # (E,)
    return EdgesTable(
        os.path.abspath(path), pin_index, board_index, list(board_pos), board_titles, extra
    ), report
