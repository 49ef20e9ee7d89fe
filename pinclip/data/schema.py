"""The documented data format (README.md, "Data format"): column names and types shared by every stage.

Pins table (parquet, jsonl or csv), one row per pin:
    pin_id       str, unique, non-empty
    image        str path (relative to the table's folder, or absolute) or raw image bytes; may be null
    title        str | null
    description  str | null
    caption      str | null
    queries      list[str] | null   (csv: a JSON list, or values separated by "|")
    annotations  list[str] | null   (csv: a JSON list, or values separated by "|")
At least one of image or a non-empty text field must be present. Extra columns are kept and ignored.

Board edges (same formats), one row per (pin, board):
    pin_id       str, must name a pin of the pins table
    board_id     str
    board_title  str | null  (optional column)

splits.json (written by `pinclip data demo`, or by `pinclip data split` for user data):
    {"seed": int,
     "cold_start_pins": [pin_id, ...],   # held out entirely: no edges in training, never seen
     "val_pins": [pin_id, ...],          # held out of training, used for periodic validation
     "heldout_boards": [board_id, ...]}  # whole boards removed from the training graph
"""

from __future__ import annotations

TEXT_FIELDS: tuple[str, ...] = ("title", "description", "caption", "queries", "annotations")
STRING_FIELDS: tuple[str, ...] = ("title", "description", "caption")
LIST_FIELDS: tuple[str, ...] = ("queries", "annotations")
PIN_COLUMNS: tuple[str, ...] = ("pin_id", "image", *TEXT_FIELDS)
EDGE_COLUMNS: tuple[str, ...] = ("pin_id", "board_id")
OPTIONAL_EDGE_COLUMNS: tuple[str, ...] = ("board_title",)
TABLE_SUFFIXES: tuple[str, ...] = (".parquet", ".jsonl", ".csv")
MAX_IMAGE_PIXELS: int = 40_000_000  # default decompression-bomb guard (pixels), configurable


def field_text(value: str | list[str] | None) -> str:
    """One string for a text field: lists are joined with ', ', null and blanks become ''."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    return ", ".join(v.strip() for v in value if v and v.strip())
