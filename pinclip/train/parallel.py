"""FSDP2 sharding and Distributed Checkpoint, for VLM backbones that do not fit on one device.

    torchrun --nproc_per_node 8 -m pinclip train --config configs/gpu.yaml model.vlm.path=... train.parallel=fsdp

`shard_model` applies `torch.distributed.fsdp.fully_shard` to every vision block and decoder
layer, then to the whole model: each rank holds 1/world of every weight and of the optimizer
state, gathers a layer's weights just before it runs and frees them after; gradients are
reduce-scattered and averaged, which is what the replicated path's all-reduce computes, so the
global-negative gather (pinclip.losses.gather) and the loss are unchanged. On a GPU the weights
are gathered in bf16 and gradients reduced in fp32.

`save_train_state` writes the trainable weights and optimizer state with PyTorch Distributed
Checkpoint (every rank writes its shards), plus the scheduler, step and config; `load_train_state`
reads them into a model sharded over any number of ranks, or not sharded at all, so a run resumes
at another world size. Frozen base weights are never written: they load from the model folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

TRAINER_FILE = "trainer.pt"
DCP_DIR = "dcp"


def shard_model(model: nn.Module, bf16: bool) -> nn.Module:
    """FSDP2 over the VLM's vision blocks, decoder layers and final norm, then the whole model."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    hf, family = model.backbone.hf, model.backbone.family
    text = family.text_model(hf)
    # the final norm alone: under full fine-tuning it trains in the model's dtype, the heads in fp32,
    # and one FSDP group needs one dtype for what it trains
    for module in [*family.vision_blocks(hf), *text.layers, text.norm]:
        fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def as_float(value: torch.Tensor) -> float:
    """A scalar that may be a DTensor (a gradient norm over sharded parameters)."""
    from torch.distributed.tensor import DTensor

    return float(value.full_tensor() if isinstance(value, DTensor) else value)


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint's weights (trained and new ones), gathered whole on rank 0; {} on the others.
    Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from pinclip.train.checkpoint import weight_names

    keep = set(weight_names(model))
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    state = get_model_state_dict(model, options=options)
    return {k: v.detach().contiguous() for k, v in state.items() if k in keep}


def _options(strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_train_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                     step: int, config_yaml: str, extra: dict | None = None) -> None:
    """Every rank: write `path` (dcp/, trainer.pt, config.yaml, meta.json) under a temporary name, then
    rank 0 renames it into place. `extra` (rank 0's, the same on every rank) goes into trainer.pt."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from pinclip.train.checkpoint import replace_folder

    path = Path(path)
    rank = dist.get_rank() if dist.is_initialized() else 0
    tmp = path.with_name(f".{path.name}.dcp-tmp")  # one name for every rank
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / DCP_DIR))
    if rank == 0:
        torch.save({"scheduler": scheduler.state_dict(), "step": step, "torch_rng": torch.get_rng_state(),
                    **(extra or {})}, tmp / TRAINER_FILE)
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / "meta.json").write_text(json.dumps({"step": step, "format": "dcp"}, indent=2))
        replace_folder(tmp, path)
    _barrier()


def has_train_state(path: str | Path) -> bool:
    return (Path(path) / DCP_DIR / ".metadata").is_file() and (Path(path) / TRAINER_FILE).is_file()


def load_train_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> dict:
    """Every rank: read a state written at any world size into this model and optimizer; returns the
    trainer state (its "step" and the extras it was saved with)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    state = {"model": model_state, "optim": optim_state}
    # a parameter that never had a gradient (e.g. a bias the chosen loss does not use) has no
    # optimizer state in the checkpoint; it keeps the zeros the fresh optimizer starts from
    dcp.load(state, checkpoint_id=str(path / DCP_DIR), planner=DefaultLoadPlanner(allow_partial_load=True))
    # not strict: the frozen base weights are not in the checkpoint (they came from the model folder)
    result = set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                            options=_options(strict=False))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    if trained & set(result.missing_keys):
        raise RuntimeError(f"{path}: checkpoint lacks trained weights, e.g. {sorted(trained & set(result.missing_keys))[:3]}")
    trainer = torch.load(path / TRAINER_FILE, map_location="cpu", weights_only=False)
    scheduler.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(trainer["torch_rng"])
    return trainer
