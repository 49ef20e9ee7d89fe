"""The checkpoint validation prefers, and early stopping: `train.keep_best`, `train.patience`.

    keeper = BestCheckpoint.start(out_dir / "best", patience=2, resumed=start > 0)
    stop = keeper.observe(record["val_recall@10"], step, save=lambda: save_checkpoint(...))

Each validation (every `train.eval_every` steps) compares the validation Recall@10 with the best so
far: a better one is saved to <out_dir>/best/ (its meta holds the step and the value); after
`patience` validations in a row without improvement training stops (0: never early). At the end the
trainer loads best/ into the model, so final/ is the step validation prefers and its meta records
`chosen_step`, `stopped_step` and `best_val_recall@10`. The untrained model (step 0) is logged but never
chosen: training is what is being chosen among.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

METRIC = "val_recall@10"


@dataclass
class BestCheckpoint:
    folder: Path
    patience: int = 0  # validations without improvement before stopping (0: never stop early)
    value: float = -math.inf  # best validation value so far
    step: int | None = None  # its step (None: nothing saved yet)
    since: int = 0  # validations since the last improvement

    @classmethod
    def start(cls, folder: Path, patience: int, resumed: bool) -> BestCheckpoint:
        """A keeper for a run that starts (an old best/ is removed) or resumes (best/ is read back)."""
        keeper = cls(Path(folder), max(0, patience))
        if not resumed:
            shutil.rmtree(keeper.folder, ignore_errors=True)
            return keeper
        try:
            meta = json.loads((keeper.folder / "meta.json").read_text())
            keeper.value, keeper.step = float(meta[f"best_{METRIC}"]), int(meta["step"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return keeper

    def observe(self, value: float, step: int, save: Callable[[], None]) -> bool:
        """Record one validation; `save()` when it is the best so far. True when training should stop."""
        if value > self.value:
            self.value, self.step, self.since = value, step, 0
            save()
            return False
        self.since += 1
        return self.patience > 0 and self.since >= self.patience

    def summary(self, last_step: int, steps: int) -> dict:
        """What final/'s meta records: the step chosen, where training stopped, the best value."""
        chosen = self.step if self.step is not None else last_step
        return {"steps": steps, "chosen_step": chosen, "stopped_step": last_step,
                **({f"best_{METRIC}": self.value} if self.step is not None else {})}
