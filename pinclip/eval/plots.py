"""PNG plots of an evaluation document (pinclip.eval.report.metrics_document), drawn with matplotlib.

headline.png: the primary metric per task, split and regime, one bar per model with its 95% interval;
quantization.png: the share of fp32 Recall@10 kept by global int8, per-dimension int8 and the ANN index;
scaling.png: PinText Recall@10 against the share of training pins, at equal steps and equal epochs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pinclip.eval.report_md import QUANT_KINDS, TASK_TITLES, cell_of
from pinclip.eval.tasks import REGIMES, SPLITS, TASKS


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def plot_headline(doc: dict[str, Any], path: Path) -> bool:
    """One panel per task; groups of bars per (split, regime); one bar per model with its interval."""
    primary, models = doc["primary"], list(doc["models"])
    tasks = [t for t in TASKS if any(t in by_task for by_task in doc["models"].values())]
    if not tasks:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(len(tasks), 1, figsize=(11, 2.8 * len(tasks)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(1, len(models))
    for ax, task in zip(axes.flat, tasks):
        groups = [(s, r) for s in SPLITS for r in REGIMES
                  if any(r in ((doc["models"][m].get(task) or {}).get(s) or {}) for m in models)]
        x = np.arange(len(groups))
        for i, model in enumerate(models):
            cells = [cell_of(doc, model, task, s, r) or {} for s, r in groups]
            ys = np.array([c.get(primary, np.nan) if c.get(primary) is not None else np.nan for c in cells])
            ci = np.array([c.get(f"{primary}_ci") or [np.nan, np.nan] for c in cells], dtype=float).reshape(-1, 2)
            err = np.abs(np.stack([ys - ci[:, 0], ci[:, 1] - ys]))
            ax.bar(x + (i - (len(models) - 1) / 2) * width, ys, width, yerr=np.nan_to_num(err), capsize=2,
                   color=colors[i % len(colors)], label=model)
        ax.set(xticks=x, ylabel=primary, title=TASK_TITLES[task], ylim=(0, 1.0))
        ax.set_xticklabels([f"{s}\n{r}" for s, r in groups], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="upper center", ncol=min(6, len(models)),
               bbox_to_anchor=(0.5, 0.0))
    _save(fig, path)
    return True


def plot_quantization(doc: dict[str, Any], path: Path) -> bool:
    """Share of fp32 Recall@10 kept, per task panel and (model, split) group; dotted lines at 99% and 98%."""
    tasks = [t for t in TASKS if any(t in q for q in doc["quantization"].values())]
    if not tasks:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(len(tasks), 1, figsize=(11, 2.6 * len(tasks)), squeeze=False)
    width, lowest = 0.26, 0.95
    for ax, task in zip(axes.flat, tasks):
        groups = [(m, s) for m, q in doc["quantization"].items() for s in SPLITS if s in (q.get(task) or {})]
        x = np.arange(len(groups))
        for j, kind in enumerate(QUANT_KINDS[1:]):
            entries = [doc["quantization"][m][task][s] for m, s in groups]
            ys = [(e.get(kind) or {}).get("recall@10", np.nan) / e["fp32"]["recall@10"]
                  if e.get(kind) and (e.get("fp32") or {}).get("recall@10") else np.nan for e in entries]
            lowest = min([lowest, *(y for y in ys if np.isfinite(y))])
            ax.bar(x + (j - 1) * width, ys, width, label=f"{kind} / fp32")
        for level in (0.99, 0.98):
            ax.axhline(level, color="gray", ls=":", lw=1)
        ax.set(xticks=x, ylabel="share of fp32 R@10", title=TASK_TITLES[task], ylim=(max(0.0, lowest - 0.02), 1.03))
        ax.set_xticklabels([f"{m}\n{s}" for m, s in groups], fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="upper center", ncol=3, fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    _save(fig, path)
    return True


def plot_scaling(doc: dict[str, Any], path: Path) -> bool:
    """PinText Recall@10 against the share of training pins, one line per budget."""
    points = (doc.get("scaling") or {}).get("points") or []
    if not points:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for budget, style in (("steps", "-o"), ("epochs", "--s")):
        mine = sorted((p for p in points if p.get("budget", "epochs") == budget), key=lambda p: p["fraction"])
        if mine:
            ax.plot([100 * p["fraction"] for p in mine],
                    [np.nan if p.get("pintext_recall@10") is None else p["pintext_recall@10"] for p in mine],
                    style, label=f"equal {budget}")
    xs = sorted({100 * p["fraction"] for p in points})
    ax.set(xscale="log", xticks=xs, xticklabels=[f"{v:g}%" for v in xs], xlabel="share of training pins",
           ylabel="PinText Recall@10", ylim=(0, 1.02), title="Dataset scaling")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
    return True


PLOTS = {"headline": plot_headline, "quantization": plot_quantization, "scaling": plot_scaling}
