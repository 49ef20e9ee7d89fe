"""`pinclip mix`: choose on validation how much of the untrained towers to mix into PinCLIP, and write the
served model.

    pinclip mix --run runs/demo                        # weights 0, 0.25, 0.5, 0.75 on the validation partition
    pinclip mix --run runs/demo --weights 0,0.5        # -> runs/demo/mixed/ (when a weight above 0 wins), mix.json
    pinclip mix --run runs/demo --domain-shift         # the score also counts the domain-shift validation cells
    pinclip mix --run runs/demo --towers-dims 128,128  # the towers' half reduced: 256 + 128 + 128 dimensions

Each weight w > 0 is PinCLIP (<run>/train/final) mixed with its own towers (pinclip.models.tower_mix), judged
with PinCLIP itself (w = 0) on the validation partition (validation pins and boards, never test) by the
selection score (pinclip.eval.selection). With --domain-shift the score also counts the domain-shift
split's validation cells: PinCLIP trained on that split (whole top-level categories held out; trained under
<run>/domain when missing) is mixed at each weight and judged on the held-out domains' validation pins and
boards, so a weight that wins in domain by forgetting what the towers knew is not chosen. The best weight is written to <run>/mix.json with every weight's
score; when it is above 0, <run>/mixed/ holds the served model (its int8 parameters fitted on mixed vectors),
which `pinclip embed`, `index` and `serve` take as a checkpoint. Ties go to the smaller weight.
With --towers-dims IMAGE,TEXT every mix has its towers' half reduced (pinclip.models.tower_mix.TowerReduction,
fitted on the training pins of the data each model trained on), and `pinclip eval --run` mixes every seed so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_WEIGHTS = "0,0.25,0.5,0.75"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mix", help="choose on validation how much of the untrained towers to mix in; write the served model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder holding train/final and data (its config's data_dir)")
    p.add_argument("--weights", default=DEFAULT_WEIGHTS, help="weights of the towers to try, in [0, 1] (0 = PinCLIP)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the run's training data)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: the run's)")
    p.add_argument("--domain-shift", action="store_true", help="count the domain-shift split's validation cells too "
                   "(trains PinCLIP on that split when missing; needs the data folder's splits_domain.json)")
    p.add_argument("--towers-dims", default=None, metavar="IMAGE,TEXT", help="reduce the towers' half to these "
                   "many singular directions of its image and text blocks (fitted on the training pins)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def served_checkpoint(run_dir: str | Path) -> Path:
    """The model a run serves: <run>/mixed when `pinclip mix` chose a weight above 0, else <run>/train/final."""
    mixed = Path(run_dir) / "mixed"
    return mixed if (mixed / "meta.json").is_file() else Path(run_dir) / "train" / "final"


def chosen_weight(run_dir: str | Path) -> float:
    """The weight `pinclip mix` chose for the run (0 when it has not chosen)."""
    try:
        return float(json.loads((Path(run_dir) / "mix.json").read_text())["weight"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def chosen_dims(run_dir: str | Path) -> tuple[int, int] | None:
    """The towers' half reduction `pinclip mix` used for the run (None: full size)."""
    try:
        dims = json.loads((Path(run_dir) / "mix.json").read_text()).get("towers_dims")
    except (OSError, ValueError, AttributeError):
        return None
    return (int(dims[0]), int(dims[1])) if dims else None


def mixed_folder(checkpoint: str | Path, weight: float, where: Path, stem: str, reduction: Any = None) -> Path:
    """create_mixed into <where>/<stem>[-towersIxT]-w<weight>."""
    from pinclip.models.tower_mix import create_mixed

    tag = f"-towers{reduction.tag}" if reduction is not None else ""
    return create_mixed(checkpoint, weight, where / f"{stem}{tag}-w{weight:g}", reduction=reduction)


def with_chosen_mix(run_dir: str | Path, models: dict[str, list[Path]], mixes_dir: str | Path | None = None
                    ) -> dict[str, list[Path]]:
    """The models with "pinclip" as served: each seed mixed at the weight chosen for the run (seed 0 of the run
    itself: <run>/mixed), and the trained model alone as "pinclip_no_mix". `mixes_dir`: where to write the
    mixes of models that are not the run's own (the domain-shift experiment's). Unchanged when no weight
    above 0 was chosen."""
    from pinclip.eval.ensemble import reduction_for

    weight, dims = chosen_weight(run_dir), chosen_dims(run_dir)
    if weight <= 0 or "pinclip" not in models:
        return models
    served = Path(run_dir) / "mixed"
    own = mixes_dir is None and (served / "meta.json").is_file()
    where = Path(mixes_dir or Path(run_dir) / "mixes")
    mixed = [served if seed == 0 and own else
             mixed_folder(folder, weight, where, f"pinclip-seed{seed}", reduction_for(folder, dims))
             for seed, folder in enumerate(models["pinclip"])]
    return {"pinclip": mixed, "pinclip_no_mix": models["pinclip"], **{k: v for k, v in models.items() if k != "pinclip"}}


def mix_done(run_dir: str | Path, final: Path, domain: bool = False, dims: tuple[int, int] | None = None) -> bool:
    """`pinclip mix` has chosen for this very checkpoint (its version) with these towers' dims; with `domain`,
    counting the domain-shift validation cells."""
    try:
        record = json.loads((Path(run_dir) / "mix.json").read_text())
        version = json.loads((final / "meta.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return False
    same_dims = (record.get("towers_dims") or None) == (list(dims) if dims else None)
    return record.get("version") == version and same_dims and (not domain or bool(record.get("domain")))


def choose_weight(scores: dict[float, float]) -> float:
    """The weight of the highest score; ties to the smaller weight."""
    if not scores:
        raise ValueError("no weight was scored")
    best = max(scores.values())
    return min(w for w, s in scores.items() if s >= best)


def mix_run(run_dir: str | Path, weights: Sequence[float], data_dir: str | None = None, cache_dir: str | None = None,
            progress: bool = True, domain: bool = False, dims: tuple[int, int] | None = None) -> dict[str, Any]:
    """Judge each weight on validation (with `domain`, also on the domain-shift split's validation partition),
    write <run>/mix.json (and <run>/mixed/ for a weight above 0). `dims`: the towers' half reduced."""
    from pinclip.eval.cli import EvalOptions, evaluate_models, run_config
    from pinclip.eval.ensemble import calibrate_mixed, reduction_for
    from pinclip.eval.selection import selection_score
    from pinclip.models.tower_mix import create_mixed

    run_dir = Path(run_dir)
    cfg = run_config(run_dir, data_dir, cache_dir)
    final = run_dir / "train" / "final"
    dataset = run_dataset(cfg)
    version = json.loads((final / "meta.json").read_text())["version"]
    if not dataset.splits.get("val_pins") and not dataset.splits.get("val_boards"):
        print("no validation pins or boards in the splits: nothing to choose a weight on; PinCLIP is served alone")
        return _write_record(run_dir, {"weight": 0.0, "version": version, "scores": {}, "partition": "val",
                                       "checkpoint": str(final), "note": "no validation partition"})
    names = {w: "pinclip" if w == 0 else f"pinclip+towers@{w:g}" for w in weights}
    reduction = reduction_for(final, dims, cfg.train.cache_dir, progress, dataset)
    models = {names[w]: [final if w == 0 else mixed_folder(final, w, run_dir / "mixes", "pinclip-seed0", reduction)]
              for w in weights}
    options = EvalOptions(partition="val", quantization=False, ann=False, trec=False, progress=progress)
    paths = _reusable_validation(run_dir / "eval-mix-val", models)
    if paths is None:
        paths = evaluate_models(models, dataset, run_dir / "eval-mix-val", cfg.train.cache_dir, options)
    else:  # `make report` after `make demo`: the in-domain cells of these very models are already judged
        print(f"in-domain validation of the same models: {paths['metrics']} (kept)")
    doc = json.loads(Path(paths["metrics"]).read_text())
    domain_doc, domain_report = (_domain_validation(run_dir, cfg, names, options, dims) if domain else (None, None))
    scores = {w: selection_score(doc, domain_doc, model=names[w])["score"] for w in weights}
    chosen = choose_weight(scores)
    record = {"weight": chosen, "version": version, "scores": {f"{w:g}": s for w, s in scores.items()}, "partition": "val",
              "report": str(paths["report"]), "checkpoint": str(final), "domain": domain_doc is not None,
              "towers_dims": list(dims) if dims else None}
    if domain_doc is not None:
        record["in_domain_scores"] = {f"{w:g}": selection_score(doc, model=names[w])["score"] for w in weights}
        record["domain_report"] = str(domain_report)
    if chosen > 0:
        folder = create_mixed(final, chosen, run_dir / "mixed", reduction=reduction)
        calibrate_mixed(folder, dataset, cfg.train.cache_dir, progress=progress)
        record["served"] = str(folder)
    else:  # PinCLIP alone: a mix of an earlier choice is not served
        shutil.rmtree(run_dir / "mixed", ignore_errors=True)
    return _write_record(run_dir, record)


def run_dataset(cfg: Any) -> Any:
    """The dataset a run trained on: its named tables (pinclip run) or its data folder."""
    from pinclip.train.dataset import load_dataset, load_dataset_dir

    if cfg.train.pins:
        return load_dataset(cfg.train.pins, cfg.train.boards, cfg.train.splits or None, check_images=False)
    return load_dataset_dir(cfg.train.data_dir)


def _reusable_validation(folder: Path, models: dict[str, list[Path]]) -> dict[str, Path] | None:
    """The paths of an earlier validation evaluation in `folder` when it judged exactly these models (every name
    with the same model version, read from each folder's meta.json); None otherwise."""
    try:
        doc = json.loads((folder / "metrics.json").read_text())
        judged = {name: info["version"] for name, info in doc["meta"]["models"].items()}
        wanted = {name: json.loads((Path(paths[0]) / "meta.json").read_text())["version"]
                  for name, paths in models.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if doc.get("partition") != "val" or judged != wanted or not (folder / "report.md").is_file():
        return None
    return {"metrics": folder / "metrics.json", "report": folder / "report.md"}


def _domain_validation(run_dir: Path, cfg: Any, names: dict[float, str], options: Any,
                       dims: tuple[int, int] | None = None) -> tuple[dict[str, Any], Path]:
    """(metrics document, report) of PinCLIP trained on the domain-shift split, mixed at each weight, on that
    split's validation partition (<run>/eval-mix-domain-val)."""
    from pinclip.cli import UserError
    from pinclip.eval.cli import evaluate_models
    from pinclip.eval.ensemble import reduction_for
    from pinclip.experiments import domain_shift_models
    from pinclip.train.dataset import load_dataset_dir

    folder, trained = domain_shift_models(cfg, run_dir, options.progress, trained=("pinclip",))
    dataset = load_dataset_dir(folder)
    if not dataset.splits.get("val_pins") and not dataset.splits.get("val_boards"):
        raise UserError(f"{folder / 'splits.json'} has no validation pins or boards: rebuild the domain-shift split "
                        "(pinclip data split --domain-column ...) to choose the weight on it")
    final = trained["pinclip"][0]
    mixes = run_dir / "domain" / "mixes"
    reduction = reduction_for(final, dims, cfg.train.cache_dir, dataset=dataset)  # that split's training pins
    models = {name: [final if w == 0 else mixed_folder(final, w, mixes, "pinclip-seed0", reduction)]
              for w, name in names.items()}
    paths = evaluate_models(models, dataset, run_dir / "eval-mix-domain-val", cfg.train.cache_dir, options)
    return json.loads(Path(paths["metrics"]).read_text()), Path(paths["report"])


def _write_record(run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    tmp = run_dir / ".mix.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, run_dir / "mix.json")
    return record


def run(args: argparse.Namespace) -> int:
    from pinclip.eval.cli import _weights, towers_dims

    weights = sorted(set([0.0, *_weights(args.weights)]))
    dims = towers_dims(args.towers_dims)
    record = mix_run(args.run, weights, args.data_dir, args.cache_dir, not args.quiet, args.domain_shift, dims)
    in_domain = record.get("in_domain_scores", {})
    for w, s in record["scores"].items():
        alone = f" (in domain alone {in_domain[w]:.4f})" if w in in_domain else ""
        print(f"  towers weight {w:>5}: selection score {s:.4f}{alone}"
              + ("  <- chosen" if float(w) == record["weight"] else ""))
    where = f" (validation report: {record['report']})" if record.get("report") else ""
    print(f"served model: {record.get('served', record['checkpoint'])}{where}")
    return 0
