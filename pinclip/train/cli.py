"""`pinclip train --config CONFIG [key=value ...]`: train PinCLIP (resumes from <out_dir>/last).

    pinclip train --config configs/demo.yaml train.steps=300
    pinclip train --pins pins.jsonl --boards boards.jsonl --splits splits.json train.out_dir=runs/mine/train
    torchrun --nproc_per_node 2 -m pinclip train --config configs/tiny.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pinclip.cli import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a PinCLIP model", description=__doc__)
    p.add_argument("--config", help="YAML config (preset: tiny|demo|gpu, then overrides)")
    p.add_argument("--preset", default=None, help="preset when no config file names one (default demo)")
    p.add_argument("--data-dir", help="dataset folder: pins.*, boards.* (parquet, jsonl or csv), splits.json")
    p.add_argument("--pins", help="your pins table (.parquet, .jsonl or .csv) instead of a data folder")
    p.add_argument("--boards", help="your board edges table (with --pins)")
    p.add_argument("--splits", help="splits.json (with --pins; default: nothing held out)")
    p.add_argument("--no-resume", action="store_true", help="start over even if <out_dir>/last exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.steps=100 loss.neighbor_weight=0.5")
    p.set_defaults(func=run)


def data_overrides(args: argparse.Namespace) -> list[str]:
    """--data-dir/--pins/--boards/--splits as train.* overrides (absolute paths: the checkpoint records them)."""

    flags = {"data_dir": args.data_dir, "pins": args.pins, "boards": args.boards, "splits": args.splits}
    if args.data_dir and (args.pins or args.boards or args.splits):
        raise UserError("give either --data-dir D or --pins P --boards E [--splits S], not both")
    cleared = ["train.pins=", "train.boards=", "train.splits="] if args.data_dir else []  # the folder, not a config's tables
    return cleared + [f"train.{key}={Path(value).resolve()}" for key, value in flags.items() if value]


def run(args: argparse.Namespace) -> int:
    from pinclip.config import load_config
    from pinclip.train.data_source import training_source
    from pinclip.train.trainer import train

    try:
        cfg = load_config(args.config, [*args.overrides, *data_overrides(args)], preset=args.preset)
    except ValueError as err:
        raise UserError(str(err)) from None
    print(f"data: {training_source(cfg.train).describe()}", flush=True)
    final = train(cfg, resume=not args.no_resume, progress=not args.quiet)
    print(f"final checkpoint: {final}")
    return 0
