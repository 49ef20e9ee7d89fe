"""`pinclip train --config CONFIG [key=value ...]`: train PinCLIP (resumes from <out_dir>/last).

    pinclip train --config configs/demo.yaml train.steps=300
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
    p.add_argument("--no-resume", action="store_true", help="start over even if <out_dir>/last exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.steps=100 loss.neighbor_weight=0.5")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pinclip.config import load_config
    from pinclip.data.splits import read_splits
    from pinclip.train.trainer import train

    try:
        cfg = load_config(args.config, args.overrides, preset=args.preset)
    except ValueError as err:
        raise UserError(str(err)) from None
    splits = Path(cfg.train.data_dir) / "splits.json"
    if splits.is_file():
        read_splits(str(splits))  # a wrongly typed splits.json stops here, naming the key
    final = train(cfg, resume=not args.no_resume, progress=not args.quiet)
    print(f"final checkpoint: {final}")
    return 0
