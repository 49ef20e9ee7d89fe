"""Ablation tables: several evaluations of one dataset and partition, each against a reference, paired.

    from pinclip.eval.compare import ablation_table
    print(ablation_table({"defaults": "runs/exp/b0/eval-val", "+ field dropout": "runs/exp/drop/eval-val"},
                         reference="defaults"))
    ablation_table({"a": ("runs/x/eval-val", "pinclip"), "b": ("runs/x/eval-val", "lit")}, reference="a")

Each folder (or (folder, model) pair, for several models of one evaluation) is an evaluation written by `pinclip eval` (metrics.json + per_query.npz). A row is one
model; a column one (task, split, regime) cell; a value the model's nDCG@10, and for every row but
the reference its paired difference from the reference over the same queries with a 95% hierarchical
bootstrap interval (clusters of queries, then seeds: pinclip.eval.stats). The cells of one row are one
family: "n.s." unless the Holm-adjusted p-value is below 0.05 with at least MIN_QUERIES queries. Warm
PinText is shown as a training fit, "(fit)". The last column is the selection score
(pinclip.eval.selection: mean nDCG@10 over the cold cells and the warm Related Pins and Search cells,
plus the domain-shift validation cells when `domain_folders` names an evaluation per row), the number
by which settings are chosen on the validation partition.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pinclip.eval.selection import selection_score
from pinclip.eval.stats import holm_significant, paired_difference
from pinclip.eval.tasks import PINTEXT, REGIMES, SPLITS, TASKS

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


def per_seed_values(per_query: dict[str, np.ndarray], model: str, cell: tuple[str, str, str], metric: str
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """((S, Q) per-seed values of a cell, (Q,) query clusters or None for an evaluation written without them)."""
    task, split, regime = cell
    seeds = sorted({k.split("/")[1] for k in per_query}, key=int)
    stem = f"{model}/{seeds[0]}/{task}/{split}/{regime}"
    values = np.stack([per_query[f"{model}/{s}/{task}/{split}/{regime}/{metric}"] for s in seeds])
    return values, per_query.get(f"{stem}/clusters")


def _column(cell: tuple[str, str, str]) -> str:
    task, split, regime = cell
    return f"{SHORT[task]} {split}{' (fit)' if task in PINTEXT and split == 'warm' else ''} {regime}"


def ablation_table(folders: dict[str, str | Path | tuple[str | Path, str]], reference: str, metric: str = "ndcg@10",
                   domain_folders: dict[str, str | Path] | None = None) -> str:
    """A markdown table of every folder's metric per cell, paired against the reference's, with the selection
    score last (module docstring)."""
    loaded = {name: load_evaluation(*path) if isinstance(path, tuple) else load_evaluation(path)
              for name, path in folders.items()}
    ref_doc, ref_q, ref_model = loaded[reference]
    cells = _cells(ref_doc, ref_model)
    header = ["model", *(_column(c) for c in cells), "selection score"]
    rows = []
    for name, (doc, per_query, model) in loaded.items():
        texts, diffs = [], []
        for cell in cells:
            if f"{model}/0/{'/'.join(cell)}/{metric}" not in per_query:  # a cell the model cannot score
                texts.append("n/a")
                continue
            ours, clusters = per_seed_values(per_query, model, cell, metric)
            if name == reference:
                texts.append(f"{ours.mean():.3f}")
                continue
            d = paired_difference(ours, per_seed_values(ref_q, ref_model, cell, metric)[0], clusters=clusters)
            diffs.append(d)
            texts.append((ours.mean(), d))
        holm_significant(diffs)  # one row: one family
        texts = [t if isinstance(t, str) else
                 f"{t[0]:.3f} ({t[1]['diff']:+.3f} [{t[1]['low']:+.3f}, {t[1]['high']:+.3f}]"
                 f"{'' if t[1]['significant'] else ' n.s.'})" for t in texts]
        domain = None
        if domain_folders and name in domain_folders:
            domain = json.loads((Path(domain_folders[name]) / "metrics.json").read_text())
        score = selection_score(doc, domain, model)["score"]
        rows.append([name, *texts, "n/a" if score is None else f"{score:.3f}"])
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
