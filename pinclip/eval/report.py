"""The evaluation report: metrics.json (machine-readable), report.md (tables) and PNG plots.

    pinclip eval --run runs/demo --baselines --scaling      # writes runs/demo/eval/
    write_report({"models": {name: evaluate_checkpoint(...)}, "scaling": scaling_curve(...),
                  "dataset": dataset_summary(dataset)}, "runs/demo/eval")

metrics.json:
    {"models": {model: {task: {split: {"recall@10": ..., ...} | null}}},
     "dims": {model: {dim: {task: {split: {...}}}}},
     "quantization": {model: {task: {split: {"fp32", "int8_global", "int8_per_dim", "ann"}}}},
     "scaling": {"metric": ..., "points": [{"fraction", "train_pins", "pintext_recall@10", ...}]} | null,
     "meta": {"dataset", "machine", "date", "models": {model: {"version", ...}}, "notes"}}
Non-finite numbers (a split without scorable queries) are written as null. Plots: recall_at_k.png
(Recall@K per task, the paper's Figure 4), scaling.png (Figure 5), quantization.png (int8 vs fp32).
Every file is written to a temporary name in out_dir and renamed into place.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from pinclip.eval.tasks import SPLITS, TASKS

MODEL_ORDER: tuple[str, ...] = ("pinclip", "two_tower", "fused_no_neighbor", "frozen")
TASK_TITLES = {"pintext_i2t": "PinText image→text", "pintext_t2i": "PinText text→image",
               "related": "Related Pins", "search": "Search"}
KS: tuple[int, ...] = (1, 10, 50, 100)
QUANT_KINDS: tuple[str, ...] = ("fp32", "int8_global", "int8_per_dim", "ann")


def _clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None, keys to strings."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def dataset_summary(dataset: Any) -> dict[str, Any]:
    """Counts of a loaded Dataset (pins, boards, edges, held-out pins and boards)."""
    splits = dataset.splits
    return {"pins": len(dataset.pins), "boards": dataset.edges.num_boards, "edges": dataset.edges.num_edges,
            "cold_start_pins": len(splits.get("cold_start_pins") or []), "val_pins": len(splits.get("val_pins") or []),
            "heldout_boards": len(splits.get("heldout_boards") or []), "pins_path": dataset.pins.path}


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


def _ordered(names: Any) -> list[str]:
    names = list(names)
    return [m for m in MODEL_ORDER if m in names] + [m for m in names if m not in MODEL_ORDER]


def metrics_document(results: dict[str, Any]) -> dict[str, Any]:
    """The metrics.json content from {"models": {name: evaluation}, "scaling": ..., "dataset": ...}."""
    evaluations = {m: results["models"][m] for m in _ordered(results.get("models", {}))}
    models = {m: {t: ev[t] for t in TASKS if t in ev} for m, ev in evaluations.items()}
    meta = {
        "dataset": results.get("dataset"), "machine": machine_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "models": {m: {k: ev.get("meta", {}).get(k) for k in ("version", "kind", "checkpoint", "dims", "quant",
                                                                 "all_test", "seconds")}
                   for m, ev in evaluations.items()},
        "tasks": {m: ev.get("meta", {}).get("tasks") for m, ev in evaluations.items()},
        "notes": {m: ev.get("notes") for m, ev in evaluations.items() if ev.get("notes")},
    }
    return _clean({
        "models": models,
        "dims": {m: ev.get("dims", {}) for m, ev in evaluations.items()},
        "quantization": {m: ev.get("quantization", {}) for m, ev in evaluations.items()},
        "scaling": results.get("scaling"),
        "meta": meta,
    })


# -- markdown ---------------------------------------------------------------------------------------
def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _gain(ours: Any, theirs: Any) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "n/a"
    return f"{100.0 * (ours - theirs) / theirs:+.1f}%"


def _ratio(x: Any, base: Any) -> str:
    return "n/a" if x is None or base is None or base == 0 else f"{100.0 * x / base:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _task_splits(doc: dict[str, Any]) -> list[tuple[str, str]]:
    present = {(t, s) for by_task in doc["models"].values() for t, by_split in by_task.items() for s in by_split or {}}
    return [(t, s) for t in TASKS for s in SPLITS if (t, s) in present]


def _metric(doc: dict[str, Any], model: str, task: str, split: str, key: str = "recall@10") -> Any:
    entry = (doc["models"].get(model, {}).get(task) or {}).get(split)
    return None if entry is None else entry.get(key)


def headline_section(doc: dict[str, Any]) -> list[str]:
    models = list(doc["models"])
    gain = "pinclip" in models and "two_tower" in models
    header = ["task", "split", *models, *(["pinclip vs two_tower"] if gain else [])]
    rows = []
    for task, split in _task_splits(doc):
        values = [_metric(doc, m, task, split) for m in models]
        extra = [_gain(_metric(doc, "pinclip", task, split), _metric(doc, "two_tower", task, split))] if gain else []
        rows.append([TASK_TITLES[task], split, *map(_num, values), *extra])
    lines = ["## Headline: Recall@10", ""] + _table(header, rows)
    for model, notes in doc["meta"].get("notes", {}).items():
        lines += [f"- {model}, {task}: {note}" for task, note in notes.items()]
    missing = [m for m in ("two_tower", "fused_no_neighbor") if m not in models]
    if "pinclip" in models and missing:
        lines.append(f"- Not in this report: {', '.join(missing)}. `make report` (or `pinclip eval --run RUN "
                     "--baselines --scaling`) trains them and the scaling curve, then rewrites it.")
    return lines + [""]


def recall_section(doc: dict[str, Any]) -> list[str]:
    lines = ["## Recall@K", "", "True recall (relevant items found in the top K / relevant items), hit@10 = share of "
             "queries with at least one relevant item in the top 10.", "", "![Recall@K](recall_at_k.png)", ""]
    for task in TASKS:
        rows = []
        for model in doc["models"]:
            for split in SPLITS:
                entry = (doc["models"][model].get(task) or {}).get(split, "absent")
                if entry == "absent":
                    continue
                entry = entry or {}
                rows.append([model, split, *(_num(entry.get(f"recall@{k}")) for k in KS), _num(entry.get("hit@10")),
                             str(entry.get("queries", "n/a")), str(entry.get("corpus", "n/a"))])
        if rows:
            lines += [f"### {TASK_TITLES[task]}", ""]
            lines += _table(["model", "split", *(f"R@{k}" for k in KS), "hit@10", "queries", "corpus"], rows)
    return lines


def quantization_section(doc: dict[str, Any]) -> list[str]:
    rows = []
    for model, by_task in doc["quantization"].items():
        for task, split in [(t, s) for t in TASKS for s in SPLITS if s in (by_task.get(t) or {})]:
            q = by_task[task][split]
            rows.append([model, TASK_TITLES[task], split, *(_num(q.get(k)) for k in QUANT_KINDS),
                         *(_ratio(q.get(k), q.get("fp32")) for k in QUANT_KINDS[1:]), str(q.get("ann_index", ""))])
    if not rows:
        return []
    header = ["model", "task", "split", "fp32", "int8 global", "int8 per-dim", "ANN",
              "global/fp32", "per-dim/fp32", "ANN/fp32", "index"]
    return ["## Quantization: Recall@10", "",
            "int8 global: one scale and zero-point (from the checkpoint) on queries and corpus; int8 per-dim: "
            "per-dimension ranges fitted on the eval corpus; ANN: the server's FAISS index over int8 codes, "
            "fp32 queries.", "", "![int8 vs fp32](quantization.png)", ""] + _table(header, rows)


def dims_section(doc: dict[str, Any]) -> list[str]:
    lines = ["## Matryoshka dims: Recall@10", ""]
    for model, by_dim in doc["dims"].items():
        dims = sorted(by_dim, key=int, reverse=True)
        if not dims:
            continue
        rows = []
        for task, split in [(t, s) for t in TASKS for s in SPLITS]:
            values = [(by_dim[d].get(task) or {}).get(split) for d in dims]
            if any(v is not None for v in values):
                rows.append([TASK_TITLES[task], split, *(_num((v or {}).get("recall@10")) for v in values)])
        lines += [f"### {model}", ""] + _table(["task", "split", *dims], rows)
    return lines if len(lines) > 2 else []


def scaling_section(doc: dict[str, Any]) -> list[str]:
    scaling = doc.get("scaling")
    if not scaling or not scaling.get("points"):
        return []
    rows = []
    for p in scaling["points"]:
        cells = [_num((p.get(t) or {}).get(s)) for t in ("pintext_i2t", "pintext_t2i") for s in SPLITS]
        rows.append([f"{100 * p['fraction']:.0f}%", str(p.get("train_pins", "n/a")),
                     _num(p.get("pintext_recall@10")), *cells])
    header = ["training pins", "count", "PinText R@10", "i2t warm", "i2t cold", "t2i warm", "t2i cold"]
    return ["## Dataset scaling", "", scaling.get("metric", ""), "", "![scaling](scaling.png)", ""] + _table(header, rows)


def render_markdown(doc: dict[str, Any]) -> str:
    meta, data = doc["meta"], doc["meta"].get("dataset") or {}
    machine = meta["machine"]
    lines = ["# PinCLIP evaluation", "",
             f"- dataset: {data.get('pins', '?')} pins, {data.get('boards', '?')} boards, {data.get('edges', '?')} "
             f"edges; {data.get('cold_start_pins', '?')} cold-start pins, {data.get('heldout_boards', '?')} "
             f"held-out boards ({data.get('pins_path', '')})",
             f"- machine: {machine.get('cpu_cores')} CPU cores, GPU: {machine.get('gpu') or 'none'}; {meta['date']}",
             *(f"- {m}: {info.get('version')} ({info.get('checkpoint')})" for m, info in meta["models"].items()),
             ""]
    for section in (headline_section, recall_section, quantization_section, dims_section, scaling_section):
        lines += section(doc)
    return "\n".join(lines).rstrip() + "\n"


# -- plots ------------------------------------------------------------------------------------------
def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recall_at_k(doc: dict[str, Any], path: Path) -> bool:
    """Recall@K curves, one panel per task, one color per model, warm solid and cold dashed."""
    tasks = [t for t in TASKS if any(t in by_task for by_task in doc["models"].values())]
    if not tasks:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes[0], tasks):
        for i, model in enumerate(doc["models"]):
            for split, style in zip(SPLITS, ("-o", "--s")):
                entry = (doc["models"][model].get(task) or {}).get(split)
                if entry:
                    ys = [entry.get(f"recall@{k}") for k in KS]
                    ax.plot(KS, [np.nan if y is None else y for y in ys], style, color=colors[i % len(colors)],
                            label=f"{model} ({split})", markersize=4)
        ax.set(xscale="log", xticks=KS, xticklabels=[str(k) for k in KS], ylim=(0, 1.02), xlabel="K",
               title=TASK_TITLES[task])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Recall@K")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), bbox_to_anchor=(0.5, 0.0))
    _save(fig, path)
    return True


def plot_quantization(doc: dict[str, Any], path: Path) -> bool:
    """Recall@10 kept by int8 (global, per-dim) and the ANN index, as a share of fp32, per task panel.

    Each (model, split) group is labelled with its fp32 Recall@10; dotted lines mark 99% and 98%.
    """
    tasks = [t for t in TASKS if any(t in q for q in doc["quantization"].values())]
    if not tasks:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(len(tasks), 1, figsize=(11, 2.9 * len(tasks)), squeeze=False)
    width, lowest, highest = 0.26, 0.95, 1.0
    for ax, task in zip(axes.flat, tasks):
        groups = [(m, s) for m, q in doc["quantization"].items() for s in SPLITS if s in (q.get(task) or {})]
        x = np.arange(len(groups))
        for j, kind in enumerate(QUANT_KINDS[1:]):
            entries = [doc["quantization"][m][task][s] for m, s in groups]
            ys = [e[kind] / e["fp32"] if e.get(kind) is not None and e.get("fp32") else np.nan for e in entries]
            lowest = min([lowest, *(y for y in ys if np.isfinite(y))])
            highest = max([highest, *(y for y in ys if np.isfinite(y))])
            ax.bar(x + (j - 1) * width, ys, width, label=f"{kind} / fp32")
        for level in (0.99, 0.98):
            ax.axhline(level, color="gray", ls=":", lw=1)
        fp32 = [_num(doc["quantization"][m][task][s].get("fp32")) for m, s in groups]
        ax.set(xticks=x, ylabel="share of fp32 Recall@10", title=TASK_TITLES[task])
        ax.set_xticklabels([f"{m}\n{s}, fp32 {v}" for (m, s), v in zip(groups, fp32)], fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.flat:
        ax.set_ylim(max(0.0, lowest - 0.02), highest + 0.03) if ax.has_data() else ax.axis("off")
    fig.tight_layout()
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="upper center", ncol=3, fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    _save(fig, path)
    return True


def plot_scaling(doc: dict[str, Any], path: Path) -> bool:
    """PinText Recall@10 against the share of training pins (Figure 5)."""
    points = (doc.get("scaling") or {}).get("points") or []
    if not points:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = [100 * p["fraction"] for p in points]
    for task, color in (("pintext_i2t", "tab:blue"), ("pintext_t2i", "tab:green")):
        for split, style in zip(SPLITS, ("-", "--")):
            ys = [(p.get(task) or {}).get(split) for p in points]
            if any(y is not None for y in ys):
                ax.plot(x, [np.nan if y is None else y for y in ys], style, color=color, alpha=0.5, lw=1,
                        label=f"{TASK_TITLES[task].split()[-1]} ({split})")
    mean = [np.nan if p.get("pintext_recall@10") is None else p["pintext_recall@10"] for p in points]
    ax.plot(x, mean, "-o", color="black", lw=2, label="PinText mean")
    for xi, yi, p in zip(x, mean, points):
        if p.get("train_pins") and np.isfinite(yi):
            ax.annotate(f"{p['train_pins']} pins", (xi, yi), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=7)
    ax.set(xscale="log", xticks=x, xticklabels=[f"{v:g}%" for v in x], xlabel="share of training pins",
           ylabel="PinText Recall@10", ylim=(0, 1.02), title="Dataset scaling")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)
    return True


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write metrics.json, report.md and the plots into out_dir; returns their paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = metrics_document(results)
    paths = {"metrics": out / "metrics.json", "report": out / "report.md"}
    for name, plot in (("recall_at_k", plot_recall_at_k), ("quantization", plot_quantization),
                       ("scaling", plot_scaling)):
        if plot(doc, out / f"{name}.png"):
            paths[name] = out / f"{name}.png"
    for key, text in (("metrics", json.dumps(doc, indent=1, allow_nan=False) + "\n"), ("report", render_markdown(doc))):
        tmp = paths[key].with_name(f".{paths[key].name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, paths[key])
    return paths
