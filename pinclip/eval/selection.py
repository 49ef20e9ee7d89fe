"""The selection score: the one number settings are chosen on (validation partition only).

    score = selection_score(json.load(open("runs/demo/eval-val/metrics.json")), "pinclip")["score"]

The mean nDCG@10 over the cells a setting should win: every cold cell (Related Pins, Search, PinText, every
regime) and the warm Related Pins and Search cells. Warm PinText scores training pins against their own
training texts, which training can memorize: it is a fit check, never part of the score.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PRIMARY = "ndcg@10"


def selected(task: str, split: str) -> bool:
    return split == "cold" or task in ("related", "search")


def selection_score(doc: dict[str, Any], model: str = "pinclip") -> dict[str, Any]:
    """{"score": mean nDCG@10 over the selected cells the model scores, "cells": [task/split/regime, ...]}."""
    cells, values = [], []
    for task, by_split in (doc["models"].get(model) or {}).items():
        for split, by_regime in (by_split or {}).items():
            for regime, cell in (by_regime or {}).items():
                if selected(task, split) and cell and cell.get(PRIMARY) is not None:
                    cells.append(f"{task}/{split}/{regime}")
                    values.append(float(cell[PRIMARY]))
    return {"score": float(np.mean(values)) if values else float("nan"), "cells": cells}
