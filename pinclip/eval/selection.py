"""The selection score: the one number by which settings are chosen on the validation partition.

    pinclip eval --run runs/demo --partition val [--domain-shift]     # prints it, writes metrics.json "selection"
    s = selection_score(json.load(open("runs/demo/eval-val/metrics.json")),
                        domain_doc=json.load(open("runs/demo/eval-domain-val/metrics.json")))
    s["score"], s["cells"]

It is the mean nDCG@10 over these cells of one model, every text regime:
- the cold cells of Related Pins, Search and PinText (both directions);
- the warm cells of Related Pins and Search;
- when a domain-shift evaluation on its validation partition is given, the same cells of it.
Warm PinText is never part of it: the model trained on exactly those image-text pairs, so it measures
how well training fitted them, not what the model learned. Nor is a cell with fewer than MIN_QUERIES (20)
queries (pinclip.eval.stats: too few to call any difference; a domain-shift validation split can leave a
handful of Search queries, whose noise would otherwise steer the choice), unless no cell of its document
has 20 (a small catalog: then every cell counts). Cells are weighted alike. A model that cannot
score a cell (BM25 on PinText) gets the mean of the cells it scores, and the cells it misses are listed:
compare scores only over the same cells.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pinclip.eval.stats import MIN_QUERIES
from pinclip.eval.tasks import PINTEXT, REGIMES, SPLITS, TASKS

SELECTION_METRIC = "ndcg@10"


def counts_for_selection(task: str, split: str) -> bool:
    """Every cold cell, and the warm cells of Related Pins and Search (never warm PinText)."""
    return split == "cold" or (split == "warm" and task not in PINTEXT)


def _cell(doc: dict, model: str, task: str, split: str, regime: str) -> dict | None:
    return ((((doc.get("models") or {}).get(model) or {}).get(task) or {}).get(split) or {}).get(regime)


def _queries(doc: dict, task: str, split: str, regime: str) -> int:
    """The most queries any model of the document has in a cell (models share a cell's queries)."""
    counts = [int(c.get("queries", 0)) for m in (doc.get("models") or {})
              if (c := _cell(doc, m, task, split, regime))]
    return max(counts, default=0)


def _present_cells(doc: dict) -> list[tuple[str, str, str]]:
    """Cells of the selection rule that any model of the document has, in task, split, regime order."""
    present = {(t, s, r) for by_task in (doc.get("models") or {}).values() for t, by_split in by_task.items()
               for s, by_regime in (by_split or {}).items() for r in (by_regime or {})}
    return [(t, s, r) for t in TASKS for s in SPLITS for r in REGIMES
            if (t, s, r) in present and counts_for_selection(t, s)]


def default_model(doc: dict) -> str:
    """pinclip when the document has it, else its first model."""
    models = list(doc.get("models") or {})
    if not models:
        raise ValueError("the evaluation document has no model")
    return "pinclip" if "pinclip" in models else models[0]


def selection_score(metrics_doc: dict, domain_doc: dict | None = None, model: str | None = None) -> dict[str, Any]:
    """{"model", "metric", "score", "cells", "missing", "too_few", "partition", "domain"}: the mean nDCG@10 of
    `model` (the document's default model) over the selection cells (module docstring); "cells" name
    "task/split/regime", prefixed "domain/" for the domain-shift document's; "too_few": cells left out for having
    fewer than MIN_QUERIES queries; "score" is None when no cell is scored."""
    model = model or default_model(metrics_doc)
    values: list[float] = []
    cells: list[str] = []
    missing: list[str] = []
    too_few: list[str] = []
    docs = [("", metrics_doc)]
    if domain_doc is not None:
        if domain_doc.get("partition") != "val":
            raise ValueError("the domain-shift document must be an evaluation of its validation partition "
                             f"(got {domain_doc.get('partition')!r}): settings are never chosen on test")
        docs.append(("domain/", domain_doc))
    for prefix, doc in docs:  # a model the domain-shift evaluation lacks misses its cells
        present = _present_cells(doc)
        sized = any(_queries(doc, t, s, r) >= MIN_QUERIES for t, s, r in present)  # else: a small catalog, keep all
        for task, split, regime in present:
            label = f"{prefix}{task}/{split}/{regime}"
            cell = _cell(doc, model, task, split, regime)
            if cell is None or cell.get(SELECTION_METRIC) is None:
                missing.append(label)
                continue
            if sized and _queries(doc, task, split, regime) < MIN_QUERIES:
                too_few.append(label)
                continue
            values.append(float(cell[SELECTION_METRIC]))
            cells.append(label)
    return {"model": model, "metric": SELECTION_METRIC, "score": sum(values) / len(values) if values else None,
            "cells": cells, "missing": missing, "too_few": too_few, "partition": metrics_doc.get("partition"),
            "domain": domain_doc is not None}


def selection_line(selection: dict[str, Any]) -> str:
    """One line for printing: the score, its cells, and a warning when it is not a validation score."""
    score = "n/a" if selection["score"] is None else f"{selection['score']:.4f}"
    where = "" if selection["partition"] == "val" else \
        f" ({selection['partition']} partition: for the record only; choose settings on --partition val)"
    domain = ", with the domain-shift validation cells" if selection["domain"] else ""
    missing = f"; {len(selection['missing'])} cells it cannot score" if selection["missing"] else ""
    if selection.get("too_few"):
        missing += f"; {len(selection['too_few'])} cells left out with fewer than {MIN_QUERIES} queries"
    return (f"selection score ({selection['model']}): {score} = mean {selection['metric']} over "
            f"{len(selection['cells'])} cells{domain}{missing}{where}")


def record_selection(metrics_path: str | Path, domain_metrics_path: str | Path | None = None) -> dict[str, Any]:
    """Recompute metrics.json's "selection" of every model, with a domain-shift validation evaluation's cells when
    given, write the file back (temp file, then rename) and return the document's default model's score."""
    path = Path(metrics_path)
    doc = json.loads(path.read_text())
    domain = json.loads(Path(domain_metrics_path).read_text()) if domain_metrics_path else None
    doc["selection"] = {m: selection_score(doc, domain, m) for m in doc.get("models") or {}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return doc["selection"][default_model(doc)]
