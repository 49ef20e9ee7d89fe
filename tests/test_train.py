"""Trainer: config overrides, exact resume from a mid-run checkpoint, 2 ranks (gloo) == 1 process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pinclip.config import load_config


def losses(out_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def tiny_overrides(catalog, out: Path, steps: int = 4) -> list[str]:
    return [f"train.data_dir={catalog['pins'].parent}", f"train.out_dir={out}", f"train.cache_dir={out.parent / 'cache'}",
            f"train.steps={steps}", "train.checkpoint_every=2", "train.eval_every=100"]


def test_config_overrides_and_errors():
    cfg = load_config(preset="tiny", overrides=["train.steps=7", "model.dims=[16,8]", "loss.quant_aware=true"])
    assert cfg.train.steps == 7 and cfg.model.dims == (16, 8) and cfg.loss.quant_aware is True
    with pytest.raises(ValueError, match="unknown config key 'train.stepz'"):
        load_config(preset="tiny", overrides=["train.stepz=1"])
    with pytest.raises(ValueError, match="expects an integer"):
        load_config(preset="tiny", overrides=["train.steps=1.5"])


def test_lp_ft_keeps_the_pretrained_layers_as_they_are_while_the_new_ones_fit_then_trains_both():
    """train.probe_steps = 3: the backbone's trained layers get learning rate 0 (so no step and no weight decay)
    for steps 0-2 while the heads move; from step 3 on both move, the backbone with its own warmup."""
    import torch

    from pinclip.models.build import build_model
    from pinclip.train.trainer import build_optimizer

    cfg = load_config(preset="tiny", overrides=["train.steps=10", "train.warmup_steps=2", "train.probe_steps=3"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    optimizer, scheduler = build_optimizer(model, cfg)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    backbone = [n for n in trained if n.startswith("backbone.")]
    heads = [n for n in trained if not n.startswith(("backbone.", "vision.")) and trained[n].ndim == 2]
    assert backbone and heads
    start = {n: p.detach().clone() for n, p in trained.items()}

    def step() -> None:
        for p in trained.values():
            p.grad = torch.ones_like(p)
        optimizer.step()
        scheduler.step()

    for _ in range(3):
        step()
    assert all(torch.equal(trained[n], start[n]) for n in backbone)  # exactly pretrained
    assert all(not torch.equal(trained[n], start[n]) for n in heads)
    # step 3 is the first of the backbone's 2-step warmup: half its learning rate
    assert any(lr == pytest.approx(cfg.train.backbone_lr / 2) for lr in scheduler.get_last_lr())
    step()
    assert all(not torch.equal(trained[n], start[n]) for n in backbone)
    plain = load_config(preset="tiny", overrides=["train.steps=10", "train.warmup_steps=2"])
    torch.manual_seed(0)
    again = build_model(plain.model)
    _, sched = build_optimizer(again, plain)
    assert all(lr > 0 for lr in sched.get_last_lr())  # without probe_steps every group trains from step 0


def test_training_counts_its_flops_on_the_first_steps(catalog, tmp_path):
    """train_flops = the mean FLOPs of the first steps (forward and backward) times the steps: twice the
    steps, twice the FLOPs (the counted steps are the same batches)."""
    from pinclip.train.trainer import train

    flops = {}
    for steps in (3, 6):
        final = train(load_config(preset="tiny", overrides=tiny_overrides(catalog, tmp_path / str(steps), steps)),
                      progress=False)
        flops[steps] = json.loads((Path(final) / "meta.json").read_text())["train_flops"]
    assert flops[3] > 0 and flops[6] == pytest.approx(2 * flops[3])


# every part of the objective and the batch that carries state or randomness
EVERYTHING = ["train.memory_size=24", "train.hard_negatives=true", "train.field_dropout=0.3", "train.text_dropout=0.2",
              "train.title_only=0.2", "train.feature_noise=0.1", "train.token_dropout=0.3",
              "loss.image_neighbor_weight=0.5", "loss.distill_weight=0.5", "loss.board_weight=0.5",
              "loss.quant_aware=true"]


HYBRID = ["model.pin_mode=hybrid", "model.pool_balance=true", "train.title_only=0.3", "train.text_dropout=0.2",
          "train.probe_steps=2"]  # LP-FT: the resumed run crosses the end of the probe


@pytest.mark.parametrize("extra", [[], EVERYTHING, HYBRID], ids=["default", "everything", "hybrid"])
def test_resume_reproduces_the_uninterrupted_run(catalog, tmp_path, extra):
    from pinclip.train.trainer import train

    full = tmp_path / "full"
    train(load_config(preset="tiny", overrides=tiny_overrides(catalog, full) + extra), progress=False)
    reference = losses(full)
    assert sorted(reference) == [1, 2, 3, 4]
    assert json.loads((full / "last" / "meta.json").read_text())["step"] == 2

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "last", resumed / "last")  # as if killed after the step-2 checkpoint
    train(load_config(preset="tiny", overrides=tiny_overrides(catalog, resumed) + extra), progress=False)
    after = losses(resumed)
    assert sorted(after) == [3, 4]
    for step in (3, 4):
        assert after[step] == pytest.approx(reference[step], rel=1e-5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_two_ranks(overrides: list[str], timeout: int = 300) -> None:
    """`pinclip train --preset tiny` on two CPU ranks (gloo) under torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "pinclip", "train", "--preset", "tiny", "--quiet", *overrides]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("extra", [[], EVERYTHING], ids=["default", "everything"])
def test_two_ranks_match_one_process(catalog, tmp_path, extra):
    from pinclip.train.trainer import train

    exact = [*extra, "train.precision=fp32"]  # bf16 rounds the two layouts' sums differently
    one = tmp_path / "one"
    train(load_config(preset="tiny", overrides=[*tiny_overrides(catalog, one, steps=3),
                                                *exact]), progress=False)
    two = tmp_path / "two"
    train_two_ranks([*tiny_overrides(catalog, two, steps=3), *exact])
    single, double = losses(one), losses(two)
    assert sorted(single) == sorted(double) == [1, 2, 3]
    for step in single:
        assert double[step] == pytest.approx(single[step], rel=1e-4, abs=1e-5)
