"""Keeping the checkpoint validation prefers and early stopping (pinclip/train/best.py, the trainer's use of it)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from pinclip.config import load_config
from pinclip.train.best import BestCheckpoint


def test_observe_keeps_the_best_and_stops_after_patience_validations_without_improvement(tmp_path):
    keeper = BestCheckpoint.start(tmp_path / "best", patience=2, resumed=False)
    saved = []
    stops = [keeper.observe(v, step, lambda s=step: saved.append(s))
             for step, v in [(2, 0.5), (4, 0.7), (6, 0.6), (8, 0.7), (10, 0.9)]]
    assert stops == [False, False, False, True, False]  # 0.6 and 0.7 (a tie is no improvement) at 6 and 8
    assert saved == [2, 4, 10]
    assert keeper.summary(last_step=8, steps=12) == {"steps": 12, "chosen_step": 10, "stopped_step": 8,
                                                     "best_val_recall@10": 0.9}
    never = BestCheckpoint.start(tmp_path / "b2", patience=0, resumed=False)
    assert not any(never.observe(v, s, lambda: None) for s, v in [(1, 0.5), (2, 0.4), (3, 0.3), (4, 0.2)])


def test_training_stops_early_and_final_is_the_best_validated_step(catalog, tmp_path, monkeypatch):
    from pinclip.train import trainer

    values = iter([0.1, 0.5, 0.7, 0.6, 0.65, 0.9])  # steps 0, 2, 4, 6, 8, (10: never reached)
    monkeypatch.setattr(trainer, "validate", lambda *args, **kwargs: {"val_recall@10": next(values)})
    out = tmp_path / "train"
    cfg = load_config(preset="tiny", overrides=[
        f"train.data_dir={catalog['pins'].parent}", f"train.out_dir={out}", f"train.cache_dir={tmp_path / 'cache'}",
        "train.steps=12", "train.eval_every=2", "train.checkpoint_every=100", "train.patience=2"])
    final = trainer.train(cfg, progress=False)
    meta = json.loads((final / "meta.json").read_text())
    assert (meta["chosen_step"], meta["stopped_step"], meta["steps"], meta["step"]) == (4, 8, 12, 4)
    assert meta["best_val_recall@10"] == 0.7
    best, kept = load_file(str(out / "best" / "model.safetensors")), load_file(str(final / "model.safetensors"))
    assert best.keys() == kept.keys() and all((best[k] == kept[k]).all() for k in best)
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in log if "loss" in r) == 8  # stopped: no step 9
    assert log[-1]["chosen_step"] == 4


def test_without_keep_best_final_is_the_last_step(catalog, tmp_path):
    from pinclip.train.trainer import train

    cfg = load_config(preset="tiny", overrides=[
        f"train.data_dir={catalog['pins'].parent}", f"train.out_dir={tmp_path / 'train'}",
        f"train.cache_dir={tmp_path / 'cache'}", "train.keep_best=false"])
    meta = json.loads((train(cfg, progress=False) / "meta.json").read_text())
    assert meta["step"] == 4 and "chosen_step" not in meta
    assert not Path(tmp_path / "train" / "best").exists()
