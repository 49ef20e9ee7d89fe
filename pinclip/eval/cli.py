"""`pinclip eval`: evaluate checkpoints on a dataset and write metrics.json + report.md + plots.

    pinclip eval --checkpoint runs/demo/train/final --data-dir runs/demo/data --out runs/demo/eval
    pinclip eval --checkpoint A --checkpoint B --name ours --name theirs --pins P --boards E --all-test
    pinclip eval --run runs/demo --baselines --scaling     # trains missing baselines, writes runs/demo/eval/

With --run, the run's PinCLIP model is <run>/train/final and its config (data, cache, steps) is the
base of the baselines; every model under <run>/baselines/ is evaluated beside it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinclip.cli import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate models: Recall@K, int8, ANN, baselines, report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", default=[], help="checkpoint folder (repeatable)")
    p.add_argument("--name", action="append", default=[], help="model name per --checkpoint (default: folder name)")
    p.add_argument("--run", help="a run folder (<run>/train/final, <run>/baselines/); writes <run>/eval by default")
    p.add_argument("--baselines", nargs="?", const="all", default=None, metavar="NAMES",
                   help="with --run: make the missing baselines first: all (the default) or some of "
                        "frozen,two_tower,fused_no_neighbor (comma-separated)")
    p.add_argument("--scaling", action="store_true", help="with --run: the dataset-scaling curve (trains models)")
    p.add_argument("--fractions", default="0.1,0.25,0.5,1.0", help="with --scaling: shares of the training pins")
    p.add_argument("--steps", type=int, default=None, help="training steps of baselines and scaling runs")
    p.add_argument("--data-dir", help="folder with pins.parquet, boards.parquet, splits.json")
    p.add_argument("--pins", help="pins table (parquet, jsonl or csv)")
    p.add_argument("--boards", help="board edges table")
    p.add_argument("--splits", help="splits.json (default: none held out; see --all-test)")
    p.add_argument("--all-test", action="store_true", help="treat the whole dataset as test: every pin cold, "
                   "every board held out (judge a model on a foreign catalog)")
    p.add_argument("--out", help="output folder (default: <run>/eval, or eval/ here)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: the model's train.cache_dir)")
    p.add_argument("--max-queries", type=int, default=1000, help="queries per task and split")
    p.add_argument("--no-ann", action="store_true", help="skip the FAISS index comparison")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _load_data(args: argparse.Namespace) -> Any:
    from pinclip.train.dataset import load_dataset, load_dataset_dir

    if args.pins or args.boards:
        if not (args.pins and args.boards):
            raise UserError("--pins and --boards go together")
        for flag, path in (("--pins", args.pins), ("--boards", args.boards), ("--splits", args.splits)):
            if path and not Path(path).is_file():
                raise UserError(f"{flag} {path}: file not found")
        return load_dataset(args.pins, args.boards, args.splits, check_images=False)
    data_dir = args.data_dir
    if not data_dir:
        raise UserError("say which data to evaluate on: --data-dir D, or --pins P --boards E [--splits S]")
    return load_dataset_dir(data_dir)


def _names(args: argparse.Namespace) -> list[str]:
    if args.name and len(args.name) != len(args.checkpoint):
        raise UserError(f"{len(args.name)} --name for {len(args.checkpoint)} --checkpoint")
    names = args.name or [_default_name(Path(c)) for c in args.checkpoint]
    if len(set(names)) != len(names):
        raise UserError(f"model names must differ, got {names}; use --name")
    return names


def _default_name(path: Path) -> str:
    """The folder's name; for a .../<name>/final or .../<name>/train/final checkpoint, <name>."""
    parts = list(path.resolve().parts)
    for tail in ("final", "train"):
        if len(parts) > 1 and parts[-1] == tail:
            parts.pop()
    return parts[-1]


@dataclass
class EvalOptions:
    """How each model is evaluated (see `evaluate_checkpoint`)."""

    all_test: bool = False
    max_queries: int = 1000
    ann: bool = True
    device: str = "cpu"
    progress: bool = True


def evaluate_models(models: dict[str, Path], dataset: Any, out_dir: str | Path, cache_dir: str | None = None,
                    options: EvalOptions | None = None, scaling: dict[str, Any] | None = None) -> dict[str, Path]:
    """Evaluate each named checkpoint on the dataset and write the report; returns the report's paths."""
    from pinclip.eval.harness import evaluate_checkpoint
    from pinclip.eval.report import dataset_summary, write_report

    options = options or EvalOptions()
    evaluations = {}
    for name, checkpoint in models.items():
        print(f"evaluating {name} ({checkpoint})")
        evaluations[name] = evaluate_checkpoint(
            checkpoint, dataset, all_test=options.all_test, cache_dir=cache_dir or _cache_of(checkpoint),
            max_queries=options.max_queries, ann=options.ann, device=options.device, progress=options.progress)
    results = {"models": evaluations, "scaling": scaling, "dataset": dataset_summary(dataset)}
    return write_report(results, out_dir)


def evaluate_run(run_dir: str | Path, baselines: bool | Sequence[str] = True, scaling: bool = True,
                 steps: int | None = None, fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0), dataset: Any = None,
                 data_dir: str | None = None, cache_dir: str | None = None, out_dir: str | Path | None = None,
                 options: EvalOptions | None = None) -> dict[str, Path]:
    """A run's PinCLIP model beside its baselines, the scaling curve (if `scaling`), and the report in
    out_dir (default <run_dir>/eval); returns the report's paths. `baselines`: True makes every missing
    baseline (trains two of them), a list of names makes those; baselines already there are always
    evaluated."""
    import yaml

    from pinclip.config import config_from_dict
    from pinclip.eval.baselines import BASELINES, main_checkpoint, scaling_curve, train_baselines
    from pinclip.train.dataset import load_dataset_dir

    options = options or EvalOptions()
    run_dir = Path(run_dir)
    main = main_checkpoint(run_dir)
    base_cfg = config_from_dict(yaml.safe_load((main / "config.yaml").read_text()))
    base_cfg.train.data_dir = data_dir or base_cfg.train.data_dir
    base_cfg.train.cache_dir = cache_dir or base_cfg.train.cache_dir
    wanted = list(BASELINES) if baselines is True else list(baselines or [])
    made = train_baselines(base_cfg, run_dir, wanted, steps=steps, progress=options.progress)
    models = {"pinclip": main}
    for name in BASELINES:  # the ones just made, and any an earlier call left in <run>/baselines
        folder = run_dir / "baselines" / name
        if name in made or (folder / "meta.json").is_file() or (folder / "final" / "meta.json").is_file():
            models[name] = made.get(name, folder)
    dataset = dataset or load_dataset_dir(base_cfg.train.data_dir)
    curve = scaling_curve(base_cfg, run_dir, fractions, steps=steps, dataset=dataset, cache_dir=base_cfg.train.cache_dir,
                          progress=options.progress) if scaling else None
    return evaluate_models(models, dataset, out_dir or run_dir / "eval", base_cfg.train.cache_dir, options, curve)


def run(args: argparse.Namespace) -> int:
    if bool(args.run) == bool(args.checkpoint):
        raise UserError("give either --checkpoint C [...] or --run RUN")
    if (args.baselines or args.scaling) and not args.run:
        raise UserError("--baselines and --scaling need --run")
    baselines = _baseline_names(args.baselines)
    options = EvalOptions(all_test=args.all_test, max_queries=args.max_queries, ann=not args.no_ann,
                          device=args.device, progress=not args.quiet)
    if args.run:
        dataset = _load_data(args) if (args.pins or args.boards) else None
        paths = evaluate_run(args.run, baselines, args.scaling, args.steps, _fractions(args.fractions),
                             dataset, args.data_dir, args.cache_dir, args.out, options)
    else:
        models = dict(zip(_names(args), map(Path, args.checkpoint)))
        paths = evaluate_models(models, _load_data(args), args.out or "eval", args.cache_dir, options)
    print(f"report: {paths['report']}\nmetrics: {paths['metrics']}")
    return 0


def _baseline_names(text: str | None) -> list[str]:
    from pinclip.eval.baselines import BASELINES

    if not text:
        return []
    names = list(BASELINES) if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise UserError(f"--baselines: unknown {', '.join(unknown)}; choose from all, {', '.join(BASELINES)}")
    return names


def _fractions(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--fractions expects numbers separated by commas, got {text!r}") from None


def _cache_of(checkpoint: Path) -> str | None:
    """The feature cache the checkpoint was trained with, if that folder exists."""
    import yaml

    from pinclip.eval.harness import resolve_checkpoint

    config = resolve_checkpoint(checkpoint) / "config.yaml"
    if not config.is_file():
        return None
    cache = (yaml.safe_load(config.read_text()) or {}).get("train", {}).get("cache_dir")
    return cache if cache and Path(cache).is_dir() else None
