"""`pinclip eval`: evaluate models on a dataset and write metrics.json, report.md, plots and TREC files.

    pinclip eval --checkpoint runs/demo/train/final --data-dir runs/demo/data --out runs/demo/eval
    pinclip eval --checkpoint A --checkpoint B --name ours --name theirs --pins P --boards E --splits S
    pinclip eval --run runs/demo --baselines all --seeds 3 --scaling   # makes what is missing (`make report`)
    pinclip eval --run runs/demo --partition val --out runs/demo/eval-val   # choose settings on validation
    pinclip eval --checkpoint runs/vlm/train/final --vlm-embedder /models/Qwen3-VL-Embedding-2B --data-dir D

--partition test (the default) judges with the test boards and the cold-start pins; val with the
validation boards and pins: choose settings on val, by the selection score it prints
(pinclip.eval.selection), and look at test for the final table only; a test report picks its "best
other" model per row on <run>/eval-val (or --val-metrics). With --run,
the run's PinCLIP model is <run>/train/final, its config (data, cache, steps) is the base of every
baseline, and every model and seed already under the run is evaluated beside it
(pinclip.experiments). --all-test judges a model on a foreign catalog (every pin cold, every board
held out).
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinclip.cli import UserError

DEFAULT_FRACTIONS = "0.1,0.25,0.5,1.0"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate models: retrieval metrics with intervals, regimes, int8, baselines",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", default=[], help="checkpoint or baseline folder (repeatable)")
    p.add_argument("--name", action="append", default=[], help="model name per --checkpoint (default: folder name)")
    p.add_argument("--run", help="a run folder (<run>/train/final, <run>/baselines/); writes <run>/eval by default")
    p.add_argument("--baselines", nargs="?", const="all", default=None, metavar="NAMES",
                   help="with --run: make the missing baselines first: all (the default) or some of "
                        "bm25,frozen,lit,lit_neighbor,fused_no_neighbor (comma-separated)")
    p.add_argument("--seeds", type=int, default=1, help="with --run: train PinCLIP and each trained baseline "
                   "with this many seeds (report mean +- std)")
    p.add_argument("--scaling", action="store_true", help="with --run: the dataset-scaling curves (trains models)")
    p.add_argument("--domain-shift", action="store_true", help="with --run: train PinCLIP and the trained baselines "
                   "on the domain-shift split (whole top-level categories held out) and judge them beside frozen and "
                   "bm25 (<run>/eval-domain)")
    p.add_argument("--fractions", default=DEFAULT_FRACTIONS, help="with --scaling: shares of the training pins")
    p.add_argument("--jobs", type=int, default=0, help="with --run: trainings run side by side, each with cores/jobs "
                   "threads and its log in <folder>/train.log (default: 2 on a CPU, 1 on a GPU)")
    p.add_argument("--tower-mix", default=None, metavar="W[,W...]",
                   help="with --run: also judge each trained model mixed with the untrained towers in output space "
                        "at these weights (pinclip.eval.ensemble; as <name>+towers@W); choose W on --partition val")
    p.add_argument("--towers-dims", default=None, metavar="IMAGE,TEXT",
                   help="with --tower-mix: the towers' half made smaller, each block on its top singular directions "
                        "fitted on the training pins (as <name>+towersIMAGExTEXT@W)")
    p.add_argument("--smooth", default=None, metavar="A[,A...]",
                   help="with --run: also judge every dense model of the run with its warm pins smoothed over their "
                        "training-graph walk neighbors at these weights (pinclip.eval.smooth; as <name>+smooth@A)")
    p.add_argument("--vlm-embedder", metavar="FOLDER", help="also score this pretrained VLM (e.g. Qwen3-VL-Embedding) "
                   "zero-shot, last-token pooled, as the vlm_embedder baseline (pinclip.baselines.vlm_embedder)")
    p.add_argument("--steps", type=int, default=None, help="training steps of trained baselines and seeds")
    p.add_argument("--partition", default="test", choices=("test", "val"),
                   help="test: the final numbers; val: for choosing settings (with --domain-shift: its validation "
                   "cells join the selection score)")
    p.add_argument("--val-metrics", metavar="PATH", help="a validation evaluation (metrics.json or its folder) that "
                   "chooses the headline's best other model per row (default with --run: <run>/eval-val if present)")
    p.add_argument("--regimes", default="full,title,image", help="text regimes of the retrieved and query pins")
    p.add_argument("--tasks", default=None, help="comma-separated subset of pintext_i2t,pintext_t2i,related,search")
    p.add_argument("--data-dir", help="folder with pins.parquet, boards.parquet, splits.json")
    p.add_argument("--pins", help="pins table (parquet, jsonl or csv)")
    p.add_argument("--boards", help="board edges table")
    p.add_argument("--splits", help="splits.json (default: none held out; see --all-test)")
    p.add_argument("--all-test", action="store_true", help="treat the whole dataset as test: every pin cold, "
                   "every board held out (judge a model on a foreign catalog)")
    p.add_argument("--out", help="output folder (default: <run>/eval, or <run>/eval-val; eval/ here)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: the model's train.cache_dir)")
    p.add_argument("--max-queries", type=int, default=1000, help="queries per task and split")
    p.add_argument("--no-ann", action="store_true", help="skip the FAISS index comparison")
    p.add_argument("--no-quant", action="store_true", help="skip the int8, ANN and Matryoshka-prefix tables")
    p.add_argument("--no-trec", action="store_true", help="do not write TREC run and qrels files")
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
    if not args.data_dir:
        raise UserError("say which data to evaluate on: --data-dir D, or --pins P --boards E [--splits S]")
    return load_dataset_dir(args.data_dir)


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

    partition: str = "test"
    regimes: tuple[str, ...] = ("full", "title", "image")
    tasks: tuple[str, ...] | None = None
    all_test: bool = False
    max_queries: int = 1000
    ann: bool = True
    quantization: bool = True
    trec: bool = True
    device: str = "cpu"
    progress: bool = True


def evaluate_models(models: dict[str, Sequence[Path]], dataset: Any, out_dir: str | Path,
                    cache_dir: str | None = None, options: EvalOptions | None = None,
                    scaling: dict[str, Any] | None = None, val_doc: dict[str, Any] | None = None) -> dict[str, Path]:
    """Evaluate each model (one folder per seed) and write the report; returns the report's paths. `val_doc`, a
    validation evaluation's metrics.json, chooses the headline's best other model per row."""
    from pinclip.eval.harness import evaluate_checkpoint
    from pinclip.eval.report import dataset_summary, write_report

    options = options or EvalOptions()
    if options.trec:  # run files of an earlier evaluation in this folder would be re-scored with these qrels
        shutil.rmtree(Path(out_dir) / "trec", ignore_errors=True)
    evaluations: dict[str, list[dict[str, Any]]] = {}
    for name, folders in models.items():
        for seed, folder in enumerate(folders):
            print(f"evaluating {name} seed {seed} ({folder})")
            trec = Path(out_dir) / "trec" if options.trec and seed == 0 else None
            evaluations.setdefault(name, []).append(evaluate_checkpoint(
                folder, dataset, partition=options.partition, all_test=options.all_test, regimes=options.regimes,
                tasks=options.tasks, cache_dir=cache_dir or _cache_of(folder), max_queries=options.max_queries,
                ann=options.ann, quantization=options.quantization, dims=None if options.quantization else [],
                device=options.device,
                progress=options.progress, trec_dir=trec, name=name))
    results = {"models": evaluations, "scaling": scaling, "dataset": dataset_summary(dataset),
               "partition": options.partition}
    return write_report(results, out_dir, val_doc)


def run_config(run_dir: str | Path, data_dir: str | None = None, cache_dir: str | None = None) -> Any:
    """The config of the run's PinCLIP model (<run>/train/final): the base of every model the run trains."""
    import yaml

    from pinclip.config import config_from_dict

    main = Path(run_dir) / "train" / "final"
    if not (main / "meta.json").is_file():
        raise UserError(f"{main}: no trained PinCLIP model; train it first "
                        f"(pinclip train --config configs/demo.yaml train.out_dir={Path(run_dir) / 'train'})")
    base_cfg = config_from_dict(yaml.safe_load((main / "config.yaml").read_text()))
    base_cfg.train.seed = 0
    base_cfg.train.data_dir = data_dir or base_cfg.train.data_dir
    base_cfg.train.cache_dir = cache_dir or base_cfg.train.cache_dir
    return base_cfg


def train_run_models(run_dir: str | Path, baselines: Sequence[str] = (), seeds: int = 1, scaling: bool = False,
                     steps: int | None = None, fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
                     domain_shift: bool = False, data_dir: str | None = None, cache_dir: str | None = None,
                     jobs: int = 1, progress: bool = True) -> None:
    """Train every model of the run that is missing (seeds, baselines, scaling points, the domain-shift
    model), `jobs` at a time (pinclip.experiments.TrainingQueue)."""
    from pinclip.experiments import TrainingQueue, domain_shift_models, make_models, scaling_runs

    base_cfg = run_config(run_dir, data_dir, cache_dir)
    queue = TrainingQueue()
    make_models(base_cfg, run_dir, ["pinclip", *baselines], seeds, steps, progress, trainer=queue.add)
    if scaling:
        scaling_runs(base_cfg, run_dir, fractions, progress=progress, trainer=queue.add)
    if domain_shift:
        domain_shift_models(run_config(run_dir, cache_dir=cache_dir), run_dir, progress, trainer=queue.add)
    queue.run(jobs, progress)


def evaluate_run(run_dir: str | Path, baselines: Sequence[str] = (), seeds: int = 1, scaling: bool = False,
                 steps: int | None = None, fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0), dataset: Any = None,
                 data_dir: str | None = None, cache_dir: str | None = None, out_dir: str | Path | None = None,
                 options: EvalOptions | None = None, extra_models: dict[str, list[Path]] | None = None,
                 val_doc: dict[str, Any] | None = None) -> dict[str, Path]:
    """Make the run's missing models (PinCLIP seeds, the named baselines, the scaling runs), then evaluate
    every model under the run and write the report to out_dir (default <run>/eval, <run>/eval-val). A test
    report chooses its best other models on `val_doc`, by default <run>/eval-val/metrics.json when present."""
    from pinclip.eval.report import read_val_doc
    from pinclip.experiments import existing_models, make_models, scaling_runs
    from pinclip.train.dataset import load_dataset_dir

    options = options or EvalOptions()
    run_dir = Path(run_dir)
    base_cfg = run_config(run_dir, data_dir, cache_dir)
    make_models(base_cfg, run_dir, ["pinclip", *baselines], seeds, steps, options.progress)
    points = scaling_runs(base_cfg, run_dir, fractions, progress=options.progress) if scaling else None
    dataset = dataset or load_dataset_dir(base_cfg.train.data_dir)
    curve = _scaling_curve(points, dataset, base_cfg.train.cache_dir, options) if points else None
    default_out = run_dir / ("eval" if options.partition == "test" else f"eval-{options.partition}")
    from pinclip.eval.mix_cli import with_chosen_mix

    if val_doc is None and options.partition == "test":
        val_doc = read_val_doc(run_dir / "eval-val")
    models = with_chosen_mix(run_dir, existing_models(run_dir))
    return evaluate_models({**models, **(extra_models or {})}, dataset, out_dir or default_out,
                           base_cfg.train.cache_dir, options, curve, val_doc)


def evaluate_domain_shift(run_dir: str | Path, cache_dir: str | None = None, options: EvalOptions | None = None
                          ) -> dict[str, Path]:
    """Train PinCLIP and the trained baselines on the domain-shift split (pinclip.experiments.domain_shift_models;
    PinCLIP mixed with its towers at the weight chosen in domain) and write their report, beside frozen and bm25, to <run>/eval-domain (test partition: the held-out test domains' pins are the cold
    pins) or <run>/eval-domain-val (val partition: the validation pins and boards of the held-out domains)."""
    from pinclip.experiments import domain_shift_models
    from pinclip.train.dataset import load_dataset_dir

    options = options or EvalOptions()
    base_cfg = run_config(run_dir, cache_dir=cache_dir)
    from pinclip.eval.mix_cli import with_chosen_mix

    folder, models = domain_shift_models(base_cfg, run_dir, options.progress)
    models = with_chosen_mix(run_dir, models, Path(run_dir) / "domain" / "mixes")  # the weight chosen in domain
    dataset = load_dataset_dir(folder)
    if options.partition == "val" and not dataset.splits.get("val_pins"):
        raise UserError(f"{folder / 'splits.json'} has no validation pins: rebuild the domain-shift split "
                        "(pinclip data split --domain-column ...) to choose settings on it")
    out = Path(run_dir) / ("eval-domain" if options.partition == "test" else "eval-domain-val")
    return evaluate_models(models, dataset, out, base_cfg.train.cache_dir, options)


def _scaling_curve(points: list[dict[str, Any]], dataset: Any, cache_dir: str, options: EvalOptions
                   ) -> dict[str, Any]:
    """PinText Recall@10 (mean of both directions over warm and cold) of every scaling point; warm queries are
    only the pins the point trained on, cold ones the same at every point (pinclip.experiments.scaling_splits)."""
    import json

    import numpy as np

    from pinclip.eval.harness import evaluate_checkpoint
    from pinclip.eval.tasks import PINTEXT
    from pinclip.experiments import scaling_splits

    for point in points:
        splits = scaling_splits(dataset, point["fraction"], point.get("seed", 0))
        ev = evaluate_checkpoint(point["checkpoint"], dataset, partition=options.partition, splits=splits,
                                 tasks=PINTEXT, quantization=False, cache_dir=cache_dir,
                                 max_queries=options.max_queries, progress=options.progress, name="scaling")
        values = {t: {s: m["full"]["recall@10"] for s, m in ev["metrics"].get(t, {}).items() if m.get("full")}
                  for t in PINTEXT}
        meta = json.loads((Path(point["checkpoint"]) / "meta.json").read_text())
        point.update(values, train_pins=meta.get("train_pins"), steps=meta.get("step"),
                     **{"pintext_recall@10": float(np.mean([v for t in values.values() for v in t.values()]))})
    return {"metric": "PinText Recall@10, mean of image->text and text->image over warm and cold", "points": points}


def run(args: argparse.Namespace) -> int:
    from pinclip.eval.tasks import REGIMES, TASKS

    if bool(args.run) == bool(args.checkpoint):
        raise UserError("give either --checkpoint C [...] or --run RUN")
    if (args.baselines or args.scaling or args.domain_shift or args.seeds != 1) and not args.run:
        raise UserError("--baselines, --seeds, --scaling and --domain-shift need --run")
    if args.towers_dims and not args.tower_mix:
        raise UserError("--towers-dims needs --tower-mix")
    towers_dims(args.towers_dims)  # a malformed value fails before any model trains
    if args.jobs < 0:
        raise UserError(f"--jobs must be at least 1 (0: the default), got {args.jobs}")
    regimes = _names_list(args.regimes, REGIMES, "--regimes")
    tasks = _names_list(args.tasks, TASKS, "--tasks") if args.tasks else None
    options = EvalOptions(args.partition, regimes, tasks, args.all_test, args.max_queries, not args.no_ann,
                          not args.no_quant, not args.no_trec, args.device, not args.quiet)
    extra = _vlm_embedder(args)
    val_doc = _val_doc(args.val_metrics)
    if args.run:
        from pinclip.experiments import default_jobs

        jobs = args.jobs or default_jobs(args.device)
        train_run_models(args.run, _baseline_names(args.baselines), args.seeds, args.scaling, args.steps,
                         _fractions(args.fractions), args.domain_shift, args.data_dir, args.cache_dir, jobs,
                         not args.quiet)
        dataset = _load_data(args) if (args.pins or args.boards) else None
        extra.update(tower_mix_models(args.run, _weights(args.tower_mix), towers_dims(args.towers_dims),
                                      args.data_dir, args.cache_dir, not args.quiet))
        extra.update(smoothed_models(args.run, _weights(args.smooth, "--smooth", upper=None)))
        paths = evaluate_run(args.run, _baseline_names(args.baselines), args.seeds, args.scaling, args.steps,
                             _fractions(args.fractions), dataset, args.data_dir, args.cache_dir, args.out, options,
                             extra, val_doc)
        domain = evaluate_domain_shift(args.run, args.cache_dir, options) if args.domain_shift else None
        if domain:
            print(f"domain-shift report: {domain['report']}")
    else:
        models = {**{name: [Path(c)] for name, c in zip(_names(args), args.checkpoint)}, **extra}
        paths = evaluate_models(models, _load_data(args), args.out or "eval", args.cache_dir, options,
                                val_doc=val_doc)
        domain = None
    print(f"report: {paths['report']}\nmetrics: {paths['metrics']}")
    print(_selection(paths["metrics"], domain["metrics"] if domain and options.partition == "val" else None))
    return 0


def _val_doc(path: str | None) -> dict[str, Any] | None:
    """The --val-metrics evaluation, checked to be one of the validation partition."""
    if path is None:
        return None
    from pinclip.eval.report import read_val_doc

    try:
        doc = read_val_doc(path)
    except ValueError as err:
        raise UserError(f"--val-metrics: {err}") from None
    if doc is None:
        raise UserError(f"--val-metrics {path}: no metrics.json there")
    return doc


def _selection(metrics: Path, domain_metrics: Path | None) -> str:
    """The selection score line of the written evaluation (with the domain-shift validation cells, recorded in
    metrics.json, when given)."""
    import json

    from pinclip.eval.selection import default_model, record_selection, selection_line

    if domain_metrics is not None:
        return selection_line(record_selection(metrics, domain_metrics))
    doc = json.loads(Path(metrics).read_text())
    return selection_line(doc["selection"][default_model(doc)])


def _vlm_embedder(args: argparse.Namespace) -> dict[str, list[Path]]:
    """{"vlm_embedder": [its folder]} when --vlm-embedder names a VLM: under <run>/baselines or the output."""
    if not args.vlm_embedder:
        return {}
    from pinclip.baselines.vlm_embedder import create_vlm_embedder

    if not (Path(args.vlm_embedder) / "config.json").is_file():
        raise UserError(f"--vlm-embedder {args.vlm_embedder}: not a Hugging Face model folder (no config.json)")
    root = Path(args.run) / "baselines" if args.run else Path(args.out or "eval")
    return {"vlm_embedder": [create_vlm_embedder(args.vlm_embedder, root / "vlm_embedder", cache_dir=args.cache_dir)]}


def tower_mix_models(run_dir: str | Path, weights: Sequence[float], dims: tuple[int, int] | None = None,
                     data_dir: str | None = None, cache_dir: str | None = None, progress: bool = False
                     ) -> dict[str, list[Path]]:
    """{"<model>+towers@W": [one tower-mix folder per seed]} of every trained model under the run, mixed with
    its untrained towers at each weight (pinclip.models.tower_mix); with `dims`, the towers' half reduced to
    (IMAGE, TEXT) singular directions fitted on the run's training pins ("<model>+towersIxT@W")."""
    from pinclip.baselines import BASELINES
    from pinclip.eval.ensemble import reduction_for
    from pinclip.eval.mix_cli import mixed_folder, run_dataset
    from pinclip.experiments import existing_models

    dataset = run_dataset(run_config(run_dir, data_dir, cache_dir)) if dims and weights else None

    name_tag = "towers{}x{}".format(*dims) if dims else "towers"
    out: dict[str, list[Path]] = {}
    for name, folders in existing_models(run_dir).items():
        if name != "pinclip" and not BASELINES[name].trained:
            continue
        for w in weights:
            out[f"{name}+{name_tag}@{w:g}"] = [
                mixed_folder(folder, w, Path(run_dir) / "mixes", f"{name}-seed{seed}",
                             reduction_for(folder, dims, cache_dir, progress, dataset))
                for seed, folder in enumerate(folders)]
    return out


def towers_dims(text: str | None, flag: str = "--towers-dims") -> tuple[int, int] | None:
    """IMAGE,TEXT -> (IMAGE, TEXT); None when not given."""
    if not text:
        return None
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{flag} expects two whole numbers IMAGE,TEXT, got {text!r}") from None
    if len(dims) != 2 or min(dims) < 1:
        raise UserError(f"{flag} expects two positive whole numbers IMAGE,TEXT, got {text!r}")
    return dims[0], dims[1]


def smoothed_models(run_dir: str | Path, alphas: Sequence[float]) -> dict[str, list[Path]]:
    """{"<model>+smooth@A": [one smoothed folder per seed]} of every dense model under the run (pinclip.eval.smooth)."""
    from pinclip.eval.mix_cli import with_chosen_mix
    from pinclip.eval.smooth import create_smoothed
    from pinclip.experiments import existing_models

    out: dict[str, list[Path]] = {}
    for name, folders in with_chosen_mix(run_dir, existing_models(run_dir)).items():
        if name == "bm25":  # a ranker: no vectors to smooth
            continue
        for a in alphas:
            out[f"{name}+smooth@{a:g}"] = [create_smoothed(folder, a, Path(run_dir) / "smoothed" / f"{name}-seed{seed}-a{a:g}")
                                          for seed, folder in enumerate(folders)]
    return out


def _weights(text: str | None, flag: str = "--tower-mix", upper: float | None = 1.0) -> list[float]:
    if not text:
        return []
    try:
        weights = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} expects numbers separated by commas, got {text!r}") from None
    bad = [w for w in weights if w < 0 or (upper is not None and w > upper)]
    if bad:
        raise UserError(f"{flag} values must be in [0, {upper if upper is not None else 'inf'}], got {bad}")
    return weights


def _names_list(text: str, known: Sequence[str], flag: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UserError(f"{flag}: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    return names


def _baseline_names(text: str | None) -> list[str]:
    from pinclip.baselines import BASELINES

    if not text:
        return []
    return list(BASELINES) if text == "all" else list(_names_list(text, list(BASELINES), "--baselines"))


def _fractions(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--fractions expects numbers separated by commas, got {text!r}") from None


def _cache_of(checkpoint: Path) -> str | None:
    """The feature cache the checkpoint was trained with, if that folder exists."""
    import yaml

    from pinclip.eval.encoders import resolve_checkpoint

    config = resolve_checkpoint(checkpoint) / "config.yaml"
    if not config.is_file():
        return None
    cache = (yaml.safe_load(config.read_text()) or {}).get("train", {}).get("cache_dir")
    return cache if cache and Path(cache).is_dir() else None
