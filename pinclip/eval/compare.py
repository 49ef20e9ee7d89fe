"""Ablation tables: several evaluations of one dataset and partition, each against a reference, paired.

    from pinclip.eval.compare import ablation_table
    print(ablation_table({"defaults": "runs/exp/b0/eval-val", "+ field dropout": "runs/exp/drop/eval-val"},
                         reference="defaults"))

Each folder is an evaluation written by `pinclip eval` (metrics.json + per_query.npz). A row is one
model; a column one (task, split, regime) cell; a value the model's nDCG@10, and for every row but
the reference its paired difference from the reference over the same queries with a 95% bootstrap
interval ("n.s." when the interval contains zero). The last column is the mean nDCG@10 over the
cells, the summary used to choose settings on the validation partition.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pinclip.eval.stats import paired_difference
from pinclip.eval.tasks import REGIMES, SPLITS, TASKS

SHORT = {"pintext_i2t": "i2t", "pintext_t2i": "t2i", "related": "rel", "search": "srch"}


def load_evaluation(folder: str | Path, model: str | None = None) -> tuple[dict, dict[str, np.ndarray], str]:
    """(metrics.json, per-query arrays, model name) of an evaluation folder (its first model by default)."""
    folder = Path(folder)
    doc = json.loads((folder / "metrics.json").read_text())
    model = model or next(iter(doc["models"]))
    with np.load(folder / "per_query.npz") as arrays:
        per_query = {k: arrays[k] for k in arrays.files if k.startswith(f"{model}/")}
    return doc, per_query, model


def _cells(doc: dict, model: str) -> list[tuple[str, str, str]]:
    by_task = doc["models"][model]
    return [(t, s, r) for t in TASKS for s in SPLITS for r in REGIMES
            if ((by_task.get(t) or {}).get(s) or {}).get(r)]


def _seed_mean(per_query: dict[str, np.ndarray], model: str, cell: tuple[str, str, str], metric: str) -> np.ndarray:
    task, split, regime = cell
    seeds = sorted({k.split("/")[1] for k in per_query})
    return np.mean([per_query[f"{model}/{s}/{task}/{split}/{regime}/{metric}"] for s in seeds], axis=0)


def ablation_table(folders: dict[str, str | Path], reference: str, metric: str = "ndcg@10") -> str:
    """A markdown table of every folder's metric per cell, paired against the reference's (module docstring)."""
    loaded = {name: load_evaluation(path) for name, path in folders.items()}
    ref_doc, ref_q, ref_model = loaded[reference]
    cells = _cells(ref_doc, ref_model)
    header = ["model", *(f"{SHORT[t]} {s} {r}" for t, s, r in cells), "mean"]
    rows = []
    for name, (_doc, per_query, model) in loaded.items():
        values, cell_texts = [], []
        for cell in cells:
            ours = _seed_mean(per_query, model, cell, metric)
            values.append(float(ours.mean()))
            if name == reference:
                cell_texts.append(f"{ours.mean():.3f}")
                continue
            d = paired_difference(ours, _seed_mean(ref_q, ref_model, cell, metric))
            mark = "" if d["significant"] else " n.s."
            cell_texts.append(f"{ours.mean():.3f} ({d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]{mark})")
        rows.append([name, *cell_texts, f"{np.mean(values):.3f}"])
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
