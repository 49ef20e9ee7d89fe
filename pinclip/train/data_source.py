"""Where a training run reads its data: a dataset folder, or the user's own tables named one by one.

    pinclip train --pins pins.jsonl --boards boards.jsonl --splits splits.json   # train.pins/boards/splits
    pinclip train --data-dir my_data                                             # train.data_dir

A dataset folder holds a pins table and a board-edges table in any documented format
(`pins.parquet|jsonl|csv`, `boards.parquet|jsonl|csv`) and `splits.json`. Named tables win over the
folder; without `splits` nothing is held out (every pin trains). Every error says what is missing for
the data that was asked for, and the command that makes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pinclip.cli import UserError
from pinclip.config import TrainConfig
from pinclip.data.schema import TABLE_SUFFIXES

DEMO_DATA_DIR = TrainConfig().data_dir  # the default folder: the demo corpus


@dataclass
class DataSource:
    pins: Path
    boards: Path
    splits: Path | None  # None: nothing held out

    def describe(self) -> str:
        held = f", splits {self.splits}" if self.splits else " (no splits: every pin trains)"
        return f"pins {self.pins}, boards {self.boards}{held}"


def _table_in(folder: Path, stem: str) -> Path | None:
    """folder/<stem>.parquet|jsonl|csv; UserError when more than one format is there."""
    found = [folder / f"{stem}{suffix}" for suffix in TABLE_SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise UserError(f"{folder} holds {' and '.join(p.name for p in found)}: keep one {stem} table")
    return found[0] if found else None


def _no_folder_hint(folder: Path) -> str:
    if str(folder) == DEMO_DATA_DIR:
        return f" (the demo corpus goes there with `pinclip data demo --out {folder}`)"
    return ""


def folder_source(data_dir: str | Path) -> DataSource:
    """The tables and splits of a dataset folder; UserError naming what is missing and how to make it."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise UserError(f"data folder {folder} not found{_no_folder_hint(folder)}; to train on your own "
                        "catalog give its tables: --pins P --boards E [--splits S]")
    pins, boards = _table_in(folder, "pins"), _table_in(folder, "boards")
    missing = [f"{stem}.parquet|jsonl|csv" for stem, table in (("pins", pins), ("boards", boards)) if table is None]
    if missing:
        raise UserError(f"{folder} holds no {' and no '.join(missing)}; put your tables there, or name them "
                        f"with --pins P --boards E [--splits S]{_no_folder_hint(folder)}")
    splits = folder / "splits.json"
    if not splits.is_file():
        raise UserError(f"{folder} has {pins.name} and {boards.name} but no splits.json; make one with "
                        f"`pinclip data split --pins {pins} --boards {boards} --out {splits}`, or train on "
                        f"the tables with nothing held out: --pins {pins} --boards {boards}")
    return DataSource(pins, boards, splits)


def table_source(pins: str | Path, boards: str | Path, splits: str | Path | None = None) -> DataSource:
    """Named tables (and splits.json); UserError for a missing one, naming the flag and the path."""
    if not pins or not boards:
        given, other = ("--pins", "--boards") if pins else ("--boards", "--pins")
        raise UserError(f"{given} needs {other} as well (train.pins and train.boards go together)")
    for flag, path in (("--pins", pins), ("--boards", boards), ("--splits", splits)):
        if path and not Path(path).is_file():
            raise UserError(f"{flag} {path}: file not found")
    return DataSource(Path(pins), Path(boards), Path(splits) if splits else None)


def training_source(cfg: TrainConfig) -> DataSource:
    """train.pins/boards/splits when set, else the tables of train.data_dir."""
    if cfg.pins or cfg.boards:
        return table_source(cfg.pins, cfg.boards, cfg.splits or None)
    if cfg.splits:
        raise UserError("train.splits (--splits) needs the tables it splits: --pins P --boards E")
    return folder_source(cfg.data_dir)


def load_source(source: DataSource, check_images: bool = False):
    """The Dataset (pins, edges, splits) of a source; fatal table problems raise UserError."""
    from pinclip.data.splits import read_splits
    from pinclip.train.dataset import load_dataset

    if source.splits is not None:
        read_splits(str(source.splits))  # a malformed splits.json is named before any table is read
    return load_dataset(source.pins, source.boards, source.splits, check_images=check_images)
