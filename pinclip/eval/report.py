"""The evaluation report: metrics.json (machine-readable), report.md (tables), per-query arrays and plots.

    pinclip eval --run runs/demo --baselines all --seeds 3 --scaling      # writes runs/demo/eval/
    write_report({"models": {name: [evaluate_checkpoint(...) per seed]}, "scaling": ..., "dataset": ...,
                  "partition": "test"}, "runs/demo/eval")

Every number is a mean over queries with a 95% hierarchical-bootstrap interval (clusters of queries,
then seeds: pinclip.eval.stats); a model trained with several seeds is the per-query mean over its
seeds with the standard deviation of the seeds' means beside it. PinCLIP is compared with every other
model on the same queries (paired bootstrap, the same clusters and seed draws for both): the cells of
one comparison are one family, whose p-values are Holm-adjusted, and a difference is "n.s." unless its
adjusted p is below 0.05 with at least MIN_QUERIES queries. A task where BM25 matches or beats every
learned model is flagged as lexically solvable.

metrics.json:
    {"partition", "primary": "ndcg@10",
     "models": {model: {task: {split: {regime: {metric: mean, metric_ci: [lo, hi], metric_std, "queries",
                                                "corpus", "seeds"} | null}}}},
     "comparisons": {model: {task: {split: {regime: {metric: {"diff", "low", "high", "relative", "p",
                                                               "p_holm", "significant"}}}}}},   pinclip - model
     "lexical": {task: {split: {regime: true | false}}},
     "best_other": {task: {split: {regime: {"model", "chosen_on": "validation" | "this partition"}}}},
     "selection": {model: pinclip.eval.selection.selection_score(...)},
     "dims", "quantization": {model: ...}  (seed 0), "scaling": {...} | null, "meta": {...}}
per_query.npz holds every per-query array ("<model>/<seed>/<task>/<split>/<regime>/<metric>").
Non-finite numbers are written as null. Files are written to a temporary name, then renamed.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from pinclip.eval.report_md import best_baseline, render_markdown
from pinclip.eval.report_md import cells as doc_cells
from pinclip.eval.selection import selection_score
from pinclip.eval.stats import holm_significant, paired_difference, seed_summary
from pinclip.eval.tasks import REGIMES, SPLITS, TASKS

MODEL_ORDER: tuple[str, ...] = ("pinclip", "pinclip_no_mix", "lit", "lit_neighbor", "fused_no_neighbor", "frozen", "bm25")
PRIMARY = "ndcg@10"
COMPARED: tuple[str, ...] = ("ndcg@10", "recall@10", "recall@100")
AGGREGATED: tuple[str, ...] = ("ndcg@10", "recall@10", "recall@100", "mrr", "hit@10", "seen@10")


def _clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None, keys to strings."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def dataset_summary(dataset: Any) -> dict[str, Any]:
    """Counts of a loaded Dataset (pins, boards, edges, held-out pins and boards)."""
    splits = dataset.splits
    return {"pins": len(dataset.pins), "boards": dataset.edges.num_boards, "edges": dataset.edges.num_edges,
            "cold_start_pins": len(splits.get("cold_start_pins") or []), "val_pins": len(splits.get("val_pins") or []),
            "heldout_boards": len(splits.get("heldout_boards") or []),
            "val_boards": len(splits.get("val_boards") or []),
            "duplicate_groups": len(splits.get("duplicate_groups") or []), "pins_path": dataset.pins.path}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_cores": os.cpu_count(), "platform": platform.platform(), "gpu": None}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def ordered(names: Any) -> list[str]:
    names = list(names)
    return [m for m in MODEL_ORDER if m in names] + [m for m in names if m not in MODEL_ORDER]


def _cells(evaluations: dict[str, list[dict]]) -> list[tuple[str, str, str]]:
    present = {(t, s, r) for runs in evaluations.values() for t, by_split in runs[0]["metrics"].items()
               for s, by_regime in by_split.items() for r in by_regime}
    return [(t, s, r) for t in TASKS for s in SPLITS for r in REGIMES if (t, s, r) in present]


def _per_query(run: dict, task: str, split: str, regime: str) -> dict[str, Any] | None:
    return run["per_query"].get(task, {}).get(split, {}).get(regime)


def aggregate(runs: list[dict], task: str, split: str, regime: str) -> dict[str, Any] | None:
    """Seed-aggregated summary of one cell (None when the model cannot score it)."""
    per_seed = [_per_query(r, task, split, regime) for r in runs]
    if any(p is None for p in per_seed):
        return None
    first = runs[0]["metrics"][task][split][regime]
    out: dict[str, Any] = {"queries": first["queries"], "corpus": first["corpus"], "seeds": len(runs)}
    clusters = per_seed[0].get("clusters")
    for name in AGGREGATED:
        if any(name not in p for p in per_seed):  # an evaluation written before the metric existed
            continue
        s = seed_summary([p[name] for p in per_seed], clusters=clusters)
        out[name], out[f"{name}_ci"], out[f"{name}_std"] = s["mean"], [s["low"], s["high"]], s["seed_std"]
    for name in ("ceiling@10", "ceiling@100"):
        out[name] = first.get(name)
    return out


def _seeds(runs: list[dict], task: str, split: str, regime: str, metric: str
           ) -> tuple[np.ndarray, list, list | None] | None:
    """((S, Q) per-seed values, query ids, query clusters or None) of one cell; None when not scored."""
    per_seed = [_per_query(r, task, split, regime) for r in runs]
    if any(p is None for p in per_seed):
        return None
    return np.stack([p[metric] for p in per_seed]), per_seed[0]["query_ids"], per_seed[0].get("clusters")


def compare(evaluations: dict[str, list[dict]], cells: list[tuple[str, str, str]]) -> dict[str, Any]:
    """Paired differences pinclip - model on the same queries, per cell and metric; the cells of one model and
    metric are one family for the Holm correction."""
    out: dict[str, Any] = {}
    if "pinclip" not in evaluations:
        return out
    for model in [m for m in evaluations if m != "pinclip"]:
        for metric in COMPARED:
            family = []
            for task, split, regime in cells:
                ours = _seeds(evaluations["pinclip"], task, split, regime, metric)
                theirs = _seeds(evaluations[model], task, split, regime, metric)
                if ours is None or theirs is None or ours[1] != theirs[1]:
                    continue
                d = paired_difference(ours[0], theirs[0], clusters=ours[2])
                family.append(d)
                out.setdefault(model, {}).setdefault(task, {}).setdefault(split, {}).setdefault(regime, {})[metric] = d
            holm_significant(family)
    return out


def lexical_flags(models: dict[str, Any], cells: list[tuple[str, str, str]]) -> dict[str, Any]:
    """True where BM25's primary metric matches or beats every learned model's."""
    out: dict[str, Any] = {}
    if "bm25" not in models:
        return out
    for task, split, regime in cells:
        bm25 = (models["bm25"].get(task, {}).get(split, {}) or {}).get(regime)
        learned = [(models[m].get(task, {}).get(split, {}) or {}).get(regime) for m in models if m != "bm25"]
        learned = [c[PRIMARY] for c in learned if c]
        if bm25 and learned:
            out.setdefault(task, {}).setdefault(split, {})[regime] = bool(bm25[PRIMARY] >= max(learned))
    return out


def best_others(doc: dict[str, Any], val_doc: dict[str, Any] | None) -> dict[str, Any]:
    """Per cell, the other model PinCLIP is set against in the headline: the best on the same cell of the
    validation evaluation `val_doc` among the models of this document, else (no validation evaluation, or it
    lacks the cell) the best on this document's own numbers."""
    out: dict[str, Any] = {}
    if "pinclip" not in doc["models"]:
        return out
    for task, split, regime in doc_cells(doc):
        chosen, where = None, "this partition"
        if val_doc is not None:
            shared = {m: val_doc["models"][m] for m in doc["models"] if m in val_doc.get("models", {})}
            chosen = best_baseline({"primary": PRIMARY, "models": shared}, task, split, regime)
            where = "validation"
        if chosen is None:
            chosen, where = best_baseline(doc, task, split, regime), "this partition"
        if chosen is not None:
            out.setdefault(task, {}).setdefault(split, {})[regime] = {"model": chosen, "chosen_on": where}
    return out


def _mean_cost(costs: list[dict | None]) -> dict[str, float | None]:
    """Mean training seconds and FLOPs over a model's seeds (None where a seed did not record them)."""
    out: dict[str, float | None] = {}
    for key in ("seconds", "flops"):
        values = [c.get(key) for c in costs if c]
        out[key] = float(np.mean(values)) if values and all(v is not None for v in values) else None
    return out


def metrics_document(results: dict[str, Any], val_doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """metrics.json from {"models": {name: [evaluation per seed]}, "scaling", "dataset", "partition"}; `val_doc`,
    the validation evaluation's metrics.json, chooses each cell's best other model (`best_others`)."""
    evaluations = {m: results["models"][m] for m in ordered(results.get("models", {}))}
    cells = _cells(evaluations)
    models = {m: {} for m in evaluations}
    for m, runs in evaluations.items():
        for task, split, regime in cells:
            if task in runs[0]["metrics"] and split in runs[0]["metrics"][task] \
                    and regime in runs[0]["metrics"][task][split]:
                models[m].setdefault(task, {}).setdefault(split, {})[regime] = aggregate(runs, task, split, regime)
    meta = {
        "dataset": results.get("dataset"), "machine": machine_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "models": {m: {**{k: runs[0].get("meta", {}).get(k) for k in ("version", "kind", "dims", "quant")},
                       "training": _mean_cost([r.get("meta", {}).get("training") for r in runs]),
                       "seeds": len(runs), "checkpoints": [r.get("meta", {}).get("checkpoint") for r in runs],
                       "seconds": sum(r.get("meta", {}).get("seconds", 0) for r in runs)}
                   for m, runs in evaluations.items()},
        "tasks": next(iter(evaluations.values()))[0].get("meta", {}).get("tasks") if evaluations else None,
        "notes": {m: runs[0].get("notes") for m, runs in evaluations.items() if runs[0].get("notes")},
    }
    doc = _clean({
        "partition": results.get("partition", "test"), "primary": PRIMARY, "models": models,
        "comparisons": compare(evaluations, cells), "lexical": lexical_flags(models, cells),
        "dims": {m: runs[0].get("dims", {}) for m, runs in evaluations.items()},
        "quantization": {m: runs[0].get("quantization", {}) for m, runs in evaluations.items()},
        "scaling": results.get("scaling"), "meta": meta,
    })
    use_val = val_doc if doc["partition"] == "test" else None  # a validation report chooses on itself
    doc["best_other"] = best_others(doc, use_val)
    doc["selection"] = _clean({m: selection_score(doc, model=m) for m in doc["models"]})
    return doc


def per_query_arrays(results: dict[str, Any]) -> dict[str, np.ndarray]:
    """Flat {"<model>/<seed>/<task>/<split>/<regime>/<metric>": array} of every per-query value."""
    out = {}
    for model, runs in results.get("models", {}).items():
        for seed, run in enumerate(runs):
            for task, by_split in run.get("per_query", {}).items():
                for split, by_regime in by_split.items():
                    for regime, values in by_regime.items():
                        for metric, array in values.items():
                            out[f"{model}/{seed}/{task}/{split}/{regime}/{metric}"] = np.asarray(array)
    return out


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_val_doc(path: str | Path) -> dict[str, Any] | None:
    """A validation evaluation's metrics.json (the file, or the folder holding it, e.g. <run>/eval-val); None when
    there is none. ValueError when it is an evaluation of another partition."""
    path = Path(path)
    path = path / "metrics.json" if path.is_dir() or not path.suffix else path
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    if doc.get("partition") != "val":
        raise ValueError(f"{path} is an evaluation of the {doc.get('partition')!r} partition, not of validation")
    return doc


def write_report(results: dict[str, Any], out_dir: str | Path, val_doc: dict[str, Any] | None = None
                 ) -> dict[str, Path]:
    """Write metrics.json, report.md, per_query.npz and the plots into out_dir; returns their paths. `val_doc`
    (the validation evaluation's metrics.json) chooses the best other model per cell."""
    from pinclip.eval.plots import PLOTS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = metrics_document(results, val_doc)
    paths = {"metrics": out / "metrics.json", "report": out / "report.md", "per_query": out / "per_query.npz"}
    for name, plot in PLOTS.items():
        if plot(doc, out / f"{name}.png"):
            paths[name] = out / f"{name}.png"
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **per_query_arrays(results))
    _write(paths["per_query"], buffer.getvalue())
    _write(paths["metrics"], (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())
    _write(paths["report"], render_markdown(doc).encode())
    return paths
