"""`pinclip tune`: the same small sweep for PinCLIP and each trained baseline, judged on validation.

    pinclip tune --run runs/demo                       # every trained model, every point of the grid (`make tune`)
    pinclip tune --run runs/demo --models lit --points base,lr-low --jobs 2

Every trained model (PinCLIP and the trained baselines, each with its own recipe) is trained once per point
of TUNE_GRID: its recipe with one setting changed, everything else (data, batch, token budget) the run's.
A point that does not apply to a model (a graph-term weight for a model without graph terms) is skipped,
so each model gets the same sweep over what it has. Every (model, point) is evaluated on the validation
partition (never test) and scored by the selection score (pinclip.eval.selection); the best point of each
model is written to <run>/tune/chosen.json beside every row (tune.md). `pinclip eval --run` trains the
baselines with their chosen point when configs/tuned.yaml (the committed choice) names one. Folders:
    <run>/tune/<model>/<point>/final        a trained model (resumes; skipped when there)
    <run>/train, <run>/baselines/<model>    the `base` point: the model's seed-0 training, shared with the report
                                            (moved aside and trained anew there if another point is chosen)
    <run>/tune/eval-val/                    the validation evaluation of every trained point
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinclip.cli import UserError


@dataclass(frozen=True)
class TunePoint:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    needs: str = ""  # "graph": only models with graph terms; "fused": only models with a fused pass
    scale: dict[str, float] = field(default_factory=dict)  # dotted setting -> factor on the recipe's value


# One change each from a model's recipe: learning rates (relative to the recipe's), loss weights, layers
# trained, steps.
LR_KEYS = ("train.lr", "train.backbone_lr")
TUNE_GRID: tuple[TunePoint, ...] = (
    TunePoint("base"),
    TunePoint("lr-half", scale=dict.fromkeys(LR_KEYS, 0.5)),
    TunePoint("lr-double", scale=dict.fromkeys(LR_KEYS, 2.0)),
    TunePoint("lr-4x", scale=dict.fromkeys(LR_KEYS, 4.0)),  # the first sweep's best sat at lr-double, its edge
    TunePoint("layers-1", {"model": {"backbone": {"train_layers": 1}}}),
    TunePoint("layers-3", {"model": {"backbone": {"train_layers": 3}}}),
    TunePoint("steps-600", {"train": {"steps": 600}}),
    TunePoint("neighbor-0.5", {"loss": {"neighbor_weight": 0.5}}, needs="graph"),
    TunePoint("neighbor-2", {"loss": {"neighbor_weight": 2.0}}, needs="graph"),
    TunePoint("board-1", {"loss": {"board_weight": 1.0}}, needs="graph"),
    TunePoint("pin-text-1", {"loss": {"pin_text_weight": 1.0}}, needs="fused"),
    TunePoint("title-weight-1", {"loss": {"field_weights": {"title": 1.0, "description": 0.5, "caption": 1.0,
                                                             "queries": 1.0, "annotations": 0.5}}}),
)
TUNED_FILE = Path(__file__).resolve().parent.parent / "configs" / "tuned.yaml"


def applies(point: TunePoint, cfg: Any) -> bool:
    """Whether a point changes something the model's recipe has (cfg: the recipe's config)."""
    if point.needs == "graph":
        return cfg.loss.neighbor_weight > 0 or cfg.loss.board_weight > 0
    if point.needs == "fused":
        return cfg.model.pin_mode != "late" and cfg.loss.pin_text_weight > 0
    return True


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _nested(values: dict[str, Any]) -> dict[str, Any]:
    """{"train.lr": 1e-3} -> {"train": {"lr": 1e-3}}."""
    out: dict[str, Any] = {}
    for dotted, value in values.items():
        node = out
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _flat(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3} (field_weights stays one value)."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict) and key != "field_weights":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def point_overrides(point: TunePoint, recipe: Any) -> dict[str, Any]:
    """The nested overrides a point applies to a recipe: its fixed values and its factors times the recipe's."""
    scaled = {key: float(_get(recipe, key)) * factor for key, factor in point.scale.items()}
    return _nested({**_flat(point.overrides), **scaled})


def swept_keys(points: Sequence[TunePoint]) -> list[str]:
    """Every setting (dotted) some point of the sweep changes."""
    return sorted({key for pt in points for key in (*_flat(pt.overrides), *pt.scale)})


def chosen_overrides(cfg: Any, keys: Sequence[str]) -> dict[str, Any]:
    """A model's committed choice: the value of every swept setting in its chosen point's config, so that the
    choice holds (e.g. `base` keeps its learning rate) when the run's preset changes later."""
    return _nested({key: copy.deepcopy(_get(cfg, key)) for key in keys})


def plan(base_cfg: Any, run_dir: str | Path, models: Sequence[str], points: Sequence[TunePoint]
         ) -> dict[tuple[str, str], Any]:
    """{(model, point): training config} of every applicable pair (seed 0)."""
    from pinclip.experiments import model_config, with_overrides

    out = {}
    for name in models:
        recipe = model_config(base_cfg, run_dir, name, 0, tuned=False)
        for point in points:
            if not applies(point, recipe):
                continue
            cfg = with_overrides(recipe, point_overrides(point, recipe))
            if point.overrides or point.scale:  # the base point is the model's seed-0 training of the report
                cfg.train.out_dir = str(Path(run_dir) / "tune" / name / point.name)
            out[(name, point.name)] = cfg
    return out


def domain_plan(configs: dict[tuple[str, str], Any], base_cfg: Any, run_dir: str | Path
                ) -> tuple[Path, dict[tuple[str, str], Any]]:
    """(domain-shift data folder, {(model, point): config}): every planned training again on the split that holds
    whole top-level categories out (the data folder's splits_domain.json), under <run>/tune-domain/<model>/<point>,
    so a point that wins in domain by forgetting what the pretrained towers knew is not chosen."""
    from pinclip.experiments import domain_shift_data, with_overrides

    folder = domain_shift_data(base_cfg, run_dir)
    return folder, {(m, p): with_overrides(cfg, {"train": {"data_dir": str(folder), "seed": 0, "out_dir": str(
        Path(run_dir) / "tune-domain" / m / p)}}) for (m, p), cfg in configs.items()}


def choose(scores: dict[tuple[str, str], float]) -> dict[str, dict[str, Any]]:
    """{model: {"point", "score", "scores"}}: each model's best point by selection score (ties: grid order)."""
    order = {p.name: i for i, p in enumerate(TUNE_GRID)}
    out: dict[str, dict[str, Any]] = {}
    for (model, point), score in sorted(scores.items(), key=lambda kv: order.get(kv[0][1], len(order))):
        entry = out.setdefault(model, {"point": None, "score": None, "scores": {}})
        entry["scores"][point] = score
        if score is not None and (entry["score"] is None or score > entry["score"]):
            entry["point"], entry["score"] = point, score
    return out


def tune_run(run_dir: str | Path, models: Sequence[str], points: Sequence[TunePoint], jobs: int = 1,
             progress: bool = True, domain_shift: bool = False) -> dict[str, Any]:
    """Train every (model, point), evaluate them on validation, write <run>/tune/chosen.json and tune.md. With
    `domain_shift` each point is also trained on the domain-shift split and the selection score counts that
    split's validation cells too (pinclip.eval.selection, "domain/" cells); the in-domain score is kept beside."""
    from pinclip.eval.cli import EvalOptions, evaluate_models, run_config
    from pinclip.eval.selection import selection_score
    from pinclip.experiments import TrainingQueue
    from pinclip.train.dataset import load_dataset_dir

    run_dir = Path(run_dir)
    base_cfg = run_config(run_dir)
    configs = plan(base_cfg, run_dir, models, points)
    queue = TrainingQueue()
    finals = {key: queue.add(cfg) for key, cfg in configs.items()}
    domain_folder, domain_configs = domain_plan(configs, base_cfg, run_dir) if domain_shift else (None, {})
    domain_finals = {key: queue.add(cfg) for key, cfg in domain_configs.items()}
    queue.run(jobs, progress)
    dataset = load_dataset_dir(base_cfg.train.data_dir)
    options = EvalOptions(partition="val", quantization=False, ann=False, trec=False, progress=progress)
    named = {f"{m}@{p}": [final] for (m, p), final in finals.items()}
    paths = evaluate_models(named, dataset, run_dir / "tune" / "eval-val", base_cfg.train.cache_dir, options)
    doc = json.loads(Path(paths["metrics"]).read_text())
    domain_doc, domain_paths = None, None
    if domain_finals:
        domain_paths = evaluate_models({f"{m}@{p}": [final] for (m, p), final in domain_finals.items()},
                                       load_dataset_dir(domain_folder), run_dir / "tune" / "eval-domain-val",
                                       base_cfg.train.cache_dir, options)
        domain_doc = json.loads(Path(domain_paths["metrics"]).read_text())
    scores = {(m, p): selection_score(doc, domain_doc, model=f"{m}@{p}")["score"] for m, p in finals}
    in_domain = {f"{m}@{p}": selection_score(doc, model=f"{m}@{p}")["score"] for m, p in finals}
    seconds = {f"{m}@{p}": json.loads((final / "meta.json").read_text()).get("seconds") for (m, p), final in finals.items()}
    chosen = choose(scores)
    for model, entry in chosen.items():
        keys = swept_keys([pt for pt in points if (model, pt.name) in configs])  # what this model's sweep changed
        entry["overrides"] = chosen_overrides(configs[(model, entry["point"])], keys) if entry["point"] else {}
    record = {"partition": "val", "metric": "selection score", "chosen": chosen, "seconds": seconds,
              "report": str(paths["report"]), "domain": domain_doc is not None, "in_domain_scores": in_domain}
    if domain_paths:
        record["domain_report"] = str(domain_paths["report"])
    _write(run_dir / "tune" / "chosen.json", json.dumps(record, indent=2))
    _write(run_dir / "tune" / "tune.md", tune_table(chosen, seconds, in_domain if domain_doc is not None else None))
    _write(run_dir / "tune" / "tuned.yaml", tuned_yaml(chosen))
    return record


def tuned_yaml(chosen: dict[str, dict[str, Any]]) -> str:
    """configs/tuned.yaml's text for a choice: each trained baseline's point, its overrides (the value of every
    setting its sweep changed, at the chosen point) and its validation score. PinCLIP's point is reported but
    not written: its choice is its preset (configs/demo.yaml)."""
    import yaml

    entries = {model: {"point": e["point"], "score": None if e["score"] is None else round(float(e["score"]), 4),
                       "overrides": json.loads(json.dumps(e.get("overrides") or {}))}  # a copy each: no YAML aliases
               for model, e in chosen.items() if model != "pinclip" and e["point"] is not None}
    head = ("# Tuned points of the trained baselines (pinclip tune, validation partition): model -> {point, score,\n"
            "# overrides}. Written by `make tune` from <run>/tune/tuned.yaml; `pinclip eval --run` (make report)\n"
            "# trains each baseline with its overrides. Every row of the sweep: results/demo/tune.md.\n")
    return head + yaml.safe_dump(entries, sort_keys=True)


def tune_table(chosen: dict[str, dict[str, Any]], seconds: dict[str, float | None],
               in_domain: dict[str, float | None] | None = None) -> str:
    """Markdown: one row per (model, point) with its validation selection score; the chosen point in bold. With
    `in_domain` ({"model@point": score}) the score counts the domain-shift cells and the in-domain one is beside."""
    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    if in_domain is None:
        lines = ["| model | point | selection score (val) | training s |", "|---|---|---:|---:|"]
    else:
        lines = ["| model | point | selection score (val, with the domain-shift cells) | in domain only | training s |",
                 "|---|---|---:|---:|---:|"]
    for model, entry in chosen.items():
        for point, score in entry["scores"].items():
            mark = "**" if point == entry["point"] else ""
            wall = seconds.get(f"{model}@{point}")
            extra = "" if in_domain is None else f" {num(in_domain.get(f'{model}@{point}'))} |"
            lines.append(f"| {model} | {mark}{point}{mark} | {num(score)} |{extra} "
                         f"{'n/a' if wall is None else f'{wall:.0f}'} |")
    return "\n".join(lines) + "\n"


def tuned_overrides(name: str, path: Path | None = None) -> dict[str, Any]:
    """The committed tuned overrides of a model (configs/tuned.yaml), {} when it names none."""
    import yaml

    path = path or TUNED_FILE
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    return dict((data.get(name) or {}).get("overrides") or {})


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="the same validation sweep for PinCLIP and every trained baseline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder with train/final (its config is every model's base)")
    p.add_argument("--models", default=None, help="comma-separated (default: pinclip and every trained baseline)")
    p.add_argument("--points", default=None, help=f"comma-separated grid points (default: all of "
                   f"{', '.join(pt.name for pt in TUNE_GRID)})")
    p.add_argument("--jobs", type=int, default=0, help="trainings side by side (default: 2 on a CPU, 1 on a GPU)")
    p.add_argument("--domain-shift", action="store_true", help="train every point on the domain-shift split too "
                   "and count its validation cells in the selection score (twice the trainings)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pinclip.baselines import TRAINED
    from pinclip.experiments import default_jobs

    models = [m.strip() for m in (args.models or ",".join(("pinclip", *TRAINED))).split(",") if m.strip()]
    unknown = sorted(set(models) - {"pinclip", *TRAINED})
    if unknown:
        raise UserError(f"--models: {unknown} are not trained models (pinclip, {', '.join(TRAINED)})")
    by_name = {pt.name: pt for pt in TUNE_GRID}
    names = [p.strip() for p in (args.points or ",".join(by_name)).split(",") if p.strip()]
    if [n for n in names if n not in by_name]:
        raise UserError(f"--points: unknown {[n for n in names if n not in by_name]}; known: {', '.join(by_name)}")
    record = tune_run(args.run, models, [by_name[n] for n in names], args.jobs or default_jobs(), not args.quiet,
                      args.domain_shift)
    for model, entry in record["chosen"].items():
        print(f"{model}: {entry['point']} (selection score {entry['score']})")
    print(f"every row: {Path(args.run) / 'tune' / 'tune.md'}; validation report: {record['report']}")
    return 0
