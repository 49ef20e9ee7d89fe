"""The report's experiments: PinCLIP and the baselines over seeds, and the dataset-scaling curves.

    pinclip eval --run runs/demo --baselines all --seeds 3 --scaling      # `make report`
    models = make_models(cfg, "runs/demo", ["pinclip", "lit", "frozen"], seeds=3)  # {name: [folders]}

Every trained model uses PinCLIP's trainer with the run's config (data, steps, batch, token budget),
changed only by its recipe (pinclip.baselines) and its seed. Folders, each trained only when its
final checkpoint is missing (delete one to retrain it; an interrupted one resumes):
    <run>/train/final                   PinCLIP, seed 0 (the demo's model)
    <run>/seeds/pinclip-seed<k>/final   PinCLIP, seed k
    <run>/baselines/<name>[/final]      a baseline, seed 0;  <run>/baselines/<name>-seed<k>/final  seed k
    <run>/scaling/frac-<f>-<budget>/final   the scaling curves
Evaluation only judges these folders (pinclip.eval); nothing here is measured.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pinclip.baselines import BASELINES, create_untrained
from pinclip.cli import UserError
from pinclip.config import Config, config_from_dict, config_to_dict

MODELS: tuple[str, ...] = ("pinclip", *BASELINES)
SCALING_BUDGETS: tuple[str, ...] = ("steps", "epochs")


def with_overrides(base_cfg: Config, updates: dict[str, Any]) -> Config:
    """A copy of base_cfg with a nested dict of values applied (names checked by the config loader)."""
    merged = config_to_dict(base_cfg)

    def apply(node: dict[str, Any], upd: dict[str, Any]) -> None:
        for key, value in upd.items():
            if isinstance(value, dict) and isinstance(node.get(key), dict) and key != "field_weights":
                apply(node[key], value)
            else:
                node[key] = copy.deepcopy(value)

    apply(merged, updates)
    return config_from_dict(merged)


def model_dir(run_dir: str | Path, name: str, seed: int) -> Path:
    """The folder of a model and seed (see the module docstring)."""
    run_dir = Path(run_dir)
    if name == "pinclip":
        return run_dir / "train" if seed == 0 else run_dir / "seeds" / f"pinclip-seed{seed}"
    return run_dir / "baselines" / (name if seed == 0 else f"{name}-seed{seed}")


Trainer = Callable[[Config], Path]  # trains (or plans) one config; returns its final checkpoint folder


# Where a training reads and writes, and how it runs, not what it learns: a folder trained under other values is reused.
RUNTIME_KEYS: tuple[str, ...] = ("out_dir", "cache_dir", "data_dir", "pins", "boards", "splits", "device", "num_threads",
                                 "parallel")


def recipe_changes(cfg: Config, out_dir: str | Path) -> list[str]:
    """The settings (dotted names) where the training in out_dir (its final or last checkpoint's config.yaml)
    differs from cfg; [] when they agree or when out_dir holds no checkpoint yet."""
    import yaml

    saved = next((Path(out_dir) / sub / "config.yaml" for sub in ("final", "last")
                  if (Path(out_dir) / sub / "config.yaml").is_file()), None)
    if saved is None:
        return []
    try:
        old = config_to_dict(config_from_dict(yaml.safe_load(saved.read_text()) or {}))
    except Exception as exc:  # an unreadable config cannot vouch for the folder
        return [f"{saved}: {exc}"]
    new = config_to_dict(cfg)
    for part in (old, new):
        for key in RUNTIME_KEYS:
            part["train"].pop(key, None)
    out: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{where}.{key}" if where else key)
        elif a != b:
            out.append(f"{where}: {a!r} -> {b!r}")

    walk(old, new, "")
    return out


def retire_other_recipe(cfg: Config) -> Path | None:
    """Move aside cfg's out_dir when it holds a training of another recipe (e.g. configs/tuned.yaml chose another
    point since it was trained), to <out_dir>-old[-N], so that it is trained anew and not silently reused."""
    out_dir = Path(cfg.train.out_dir)
    changes = recipe_changes(cfg, out_dir)
    if not changes:
        return None
    from pinclip.pipeline import move_aside

    target = move_aside(out_dir, "old")
    shown = "; ".join(changes[:4]) + (f"; ... ({len(changes)} in all)" if len(changes) > 4 else "")
    print(f"{out_dir} was trained with another recipe ({shown}): moved to {target}, training anew")
    return target


def train_once(cfg: Config, progress: bool = True) -> Path:
    """The final checkpoint of cfg's run, trained (or resumed) only when it is not there yet. A folder trained
    (or begun) with another recipe is moved aside first (retire_other_recipe)."""
    from pinclip.train.trainer import train

    retire_other_recipe(cfg)
    final = Path(cfg.train.out_dir) / "final"
    if (final / "meta.json").is_file():
        return final
    return Path(train(cfg, progress=progress))


def default_jobs(device: str = "cpu") -> int:
    """Trainings run side by side: two on a CPU machine (one step of a small model leaves cores idle, so two
    processes of half the threads each finish sooner than one after the other), one on a GPU."""
    import torch

    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return 1 if on_gpu or (os.cpu_count() or 1) < 2 else 2


class TrainingQueue:
    """Trainings gathered first (`add` is a Trainer that only plans), then run `jobs` at a time.

        queue = TrainingQueue()
        make_models(cfg, run, ["pinclip", "lit"], seeds=3, trainer=queue.add)
        queue.run(jobs=2)       # each process: cores // jobs threads, its output in <out_dir>/train.log
    """

    def __init__(self) -> None:
        self.configs: dict[str, Config] = {}

    def add(self, cfg: Config) -> Path:
        final = Path(cfg.train.out_dir) / "final"
        if (final / "meta.json").is_file() and recipe_changes(cfg, cfg.train.out_dir):
            retire_other_recipe(cfg)
        if not (final / "meta.json").is_file():
            self.configs.setdefault(str(Path(cfg.train.out_dir).resolve()), cfg)
        return final

    def run(self, jobs: int = 1, progress: bool = True) -> None:
        """Train every planned config (the longest first); an interrupted queue resumes where it stopped."""
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context

        from tqdm.auto import tqdm

        todo = sorted(self.configs.values(), key=lambda c: -c.train.steps)
        if not todo:
            return
        if jobs <= 1:
            for cfg in todo:
                train_once(cfg, progress)
            return
        threads = max(1, (os.cpu_count() or 1) // jobs)
        print(f"training {len(todo)} models, {jobs} at a time ({threads} threads each; logs in <out_dir>/train.log)")
        bar = tqdm(total=len(todo), desc="trainings", unit="model", disable=not progress or None)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_train_logged, config_to_dict(cfg), threads): cfg for cfg in todo}
            for future in as_completed(futures):
                out_dir = futures[future].train.out_dir
                try:
                    future.result()
                except Exception as exc:
                    for other in futures:
                        other.cancel()
                    raise UserError(f"training {out_dir} failed: {exc} (see {Path(out_dir) / 'train.log'})") from exc
                bar.update(1)
                bar.write(f"trained {out_dir}")
        bar.close()
        self.configs.clear()


def _train_logged(cfg_dict: dict[str, Any], threads: int) -> str:
    """One queued training in a worker process: its own thread count, its output in <out_dir>/train.log."""
    cfg = config_from_dict(cfg_dict)
    cfg.train.num_threads = cfg.train.num_threads or threads
    Path(cfg.train.out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(cfg.train.out_dir) / "train.log", "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        return str(train_once(cfg, progress=False))


def model_config(base_cfg: Config, run_dir: str | Path, name: str, seed: int, steps: int | None = None,
                 tuned: bool = True) -> Config:
    """The training config of a trained model (PinCLIP or a trained baseline) and seed: the run's config, the
    baseline's recipe and, with `tuned`, its point chosen by `pinclip tune` (configs/tuned.yaml; PinCLIP's
    choice is the run's config itself)."""
    cfg = with_overrides(base_cfg, BASELINES[name].overrides if name != "pinclip" else {})
    if tuned and name != "pinclip":
        from pinclip.tune import tuned_overrides

        cfg = with_overrides(cfg, tuned_overrides(name))
    cfg.train.out_dir = str(model_dir(run_dir, name, seed))
    cfg.train.seed = seed
    cfg.train.steps = steps or cfg.train.steps
    return cfg


def make_models(base_cfg: Config, run_dir: str | Path, names: Sequence[str], seeds: int = 1,
                steps: int | None = None, progress: bool = True, trainer: Trainer | None = None
                ) -> dict[str, list[Path]]:
    """{name: [folder of seed 0, 1, ...]} for each model, training (with `trainer`, default train_once) or
    writing what is missing. Untrained baselines (bm25, frozen) are deterministic: one folder, whatever
    `seeds` says."""
    trainer = trainer or (lambda cfg: train_once(cfg, progress))
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise UserError(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    out: dict[str, list[Path]] = {}
    for name in names:
        if name in BASELINES and not BASELINES[name].trained:
            folder = model_dir(run_dir, name, 0)
            out[name] = [folder if (folder / "meta.json").is_file() else create_untrained(name, base_cfg, folder)]
            continue
        out[name] = [trainer(model_config(base_cfg, run_dir, name, s, steps)) for s in range(seeds)]
    return out


def existing_models(run_dir: str | Path) -> dict[str, list[Path]]:
    """The models and seeds already made under a run folder, in seed order."""
    out: dict[str, list[Path]] = {}
    for name in MODELS:
        folders = []
        for seed in range(100):
            folder = model_dir(run_dir, name, seed)
            checkpoint = folder / "final" if (folder / "final" / "meta.json").is_file() else folder
            if not (checkpoint / "meta.json").is_file():
                break
            folders.append(checkpoint)
        if folders:
            out[name] = folders
    return out


def scaling_runs(base_cfg: Config, run_dir: str | Path, fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
                 budgets: Sequence[str] = SCALING_BUDGETS, progress: bool = True, trainer: Trainer | None = None
                 ) -> list[dict[str, Any]]:
    """PinCLIP trained on each share of the training pins (whole duplicate groups, pinclip.train.dataset.
    training_subset), at equal steps (compute held fixed) and at equal epochs (a share f trains for f of the
    steps, at least 30). The 100% point is the run's model. Judge a point with `scaling_splits`."""
    trainer = trainer or (lambda cfg: train_once(cfg, progress))
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise UserError(f"training fractions must be in (0, 1], got {bad}")
    points = []
    for fraction in sorted(fractions):
        for budget in budgets:
            main = Path(run_dir) / "train" / "final"
            if fraction == 1.0 and (main / "meta.json").is_file():
                checkpoint = main
            else:
                cfg = with_overrides(base_cfg, {"train": {"train_fraction": float(fraction)}})
                cfg.train.out_dir = str(Path(run_dir) / "scaling" / f"frac-{fraction:.2f}-{budget}")
                if budget == "epochs":
                    cfg.train.steps = max(30, round(cfg.train.steps * fraction))
                    cfg.train.warmup_steps = min(cfg.train.warmup_steps, max(1, cfg.train.steps // 5))
                checkpoint = trainer(cfg)
            points.append({"fraction": float(fraction), "budget": budget, "checkpoint": str(checkpoint),
                           "seed": int(base_cfg.train.seed)})
    return points


def scaling_splits(dataset: Any, fraction: float, seed: int) -> dict[str, Any]:
    """The dataset's splits for judging a scaling run trained on `fraction` of the training pins with `seed`: the
    training pins it left out (pinclip.train.dataset.training_subset) are listed as `untrained_pins`, which the
    evaluation neither queries as warm nor counts as cold; the cold pins are the same at every fraction."""
    from pinclip.train.dataset import training_subset

    trained = set(training_subset(dataset.pins, dataset.splits, fraction, seed).tolist())
    held = set(dataset.splits.get("cold_start_pins") or []) | set(dataset.splits.get("val_pins") or [])
    untrained = [p for i, p in enumerate(dataset.pins.pin_ids) if i not in trained and p not in held]
    return {**dataset.splits, "untrained_pins": untrained}


def domain_shift_data(base_cfg: Config, run_dir: str | Path) -> Path:
    """The run's domain-shift dataset folder (<run>/data-domain, its splits.json the data folder's
    splits_domain.json: whole top-level categories held out); a UserError when there is no such split."""
    from pinclip.data.demo import domain_shift_folder

    data_dir = Path(base_cfg.train.data_dir)
    if not (data_dir / "splits_domain.json").is_file():
        raise UserError(f"{data_dir / 'splits_domain.json'} not found: the domain-shift split is written by "
                        "`pinclip data demo`, or by `pinclip data split --domain-column ... --out splits_domain.json`")
    return Path(domain_shift_folder(str(data_dir), str(Path(run_dir) / "data-domain")))


def domain_shift_models(base_cfg: Config, run_dir: str | Path, progress: bool = True, trainer: Trainer | None = None,
                        trained: Sequence[str] = ("pinclip", "lit", "lit_neighbor", "fused_no_neighbor")
                        ) -> tuple[Path, dict[str, list[Path]]]:
    """(dataset folder, {name: [folder]}) of the domain-shift experiment: PinCLIP and the trained baselines,
    each trained (seed 0, its own recipe) on the split that holds whole top-level categories out (the data
    folder's splits_domain.json), under <run>/domain/ laid out as a run; beside them the untrained baselines,
    which need no training and so are the run's own."""
    folder = domain_shift_data(base_cfg, run_dir)
    domain_cfg = with_overrides(base_cfg, {"train": {"data_dir": str(folder), "seed": 0}})
    train_fn = trainer or (lambda c: train_once(c, progress))
    models = {name: [train_fn(model_config(domain_cfg, Path(run_dir) / "domain", name, 0))] for name in trained}
    models.update(make_models(base_cfg, run_dir, ["frozen", "bm25"], progress=progress))
    return folder, models
