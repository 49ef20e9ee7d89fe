"""The `frozen` baseline: pretrained towers without any alignment training.

    create_frozen(cfg, "runs/demo/baselines/frozen")     # a folder `pinclip eval --checkpoint` loads

Text = the backbone mean-pooled over tokens (the sentence-transformers recipe, every layer frozen),
with the same token budget per field as the PinCLIP model it is compared with; image = the vision
tower's pooled grid. A pin is the normalized concatenation [unit image; unit text], its text half
being the unit mean of its kept fields' unit embeddings (so in the image regime it is the image
alone). Search scores the query's text embedding against the pins' text halves, so it cannot search
pins without text. Image and text live in unrelated spaces: PinText is not scored.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pinclip.config import Config, config_from_dict, config_to_dict, save_config
from pinclip.data.schema import TEXT_FIELDS
from pinclip.eval.protocol import TaskVectors, unit
from pinclip.eval.tasks import PINTEXT, TaskSpec, pin_fields, regime_mask

NO_ALIGNMENT = ("frozen image and text towers share no embedding space: image<->text retrieval cannot be "
                "scored without alignment")
NO_TEXT = "frozen search matches the query against pin text; pins without text cannot be searched"


def mean_pooled_fields(states: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean over tokens of every (pin, field) of ragged TextStates: (P, F, W) float32 and mask (P, F)."""
    present = states.length > 0  # (P, F)
    starts = states.start[present]  # (N,) segments are packed back to back in `tokens`
    order = np.argsort(starts)
    sums = np.add.reduceat(states.tokens, starts[order], axis=0, dtype=np.float32) if len(starts) else None
    out = np.zeros((*states.length.shape, states.tokens.shape[1]), np.float32)  # (P, F, W)
    if sums is not None:
        means = np.empty_like(sums)
        means[order] = sums / states.length[present][order][:, None]  # back to the mask's order
        out[present] = means
    return out, present


class FrozenEncoder:
    """Frozen pretrained towers, no alignment (see the module docstring)."""

    kind = "frozen"
    dims: list[int] = []
    quant = None

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        import yaml

        from pinclip.models.backbone import Backbone
        from pinclip.models.vision import build_vision_tower

        folder = Path(folder)
        self.meta = json.loads((folder / "meta.json").read_text())
        self.cfg = config_from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
        self.version = str(self.meta["version"])
        self.device = device
        self.vision = build_vision_tower(self.cfg.model.vision).to(device).eval()
        self.backbone = Backbone(self.cfg.model.backbone).to(device).eval()
        self.notes = {task: NO_ALIGNMENT for task in PINTEXT}

    def prepare(self, pins: Any, cache_dir: str | Path | None, progress: bool) -> None:
        from pinclip.models.features import image_features
        from pinclip.models.text_states import compute_text_states, field_strings

        vis, self.has_image = image_features(self.vision, self.cfg.model.vision, pins.images, cache_dir,
                                             progress=progress)
        if vis.shape[1] == 0:  # a catalog without a single readable image
            vis = np.zeros((len(pins), 1, self.vision.out_channels), np.float16)
        self.image = unit(vis[:, 0].astype(np.float32)) * self.has_image[:, None]  # (P, C) the global token
        states = compute_text_states(self.backbone, field_strings(pins.texts, len(pins)), cache_dir=cache_dir,
                                     progress=progress)
        self.fields_text, _ = mean_pooled_fields(states)  # (P, F, W)
        self.fields = pin_fields(pins.pin_ids, pins.texts)

    def text_half(self, regime: str) -> np.ndarray:
        """(P, W) unit mean of the kept fields' unit embeddings; zero rows for pins with none."""
        mask = regime_mask(self.fields, regime)
        return unit((unit(self.fields_text) * mask[..., None]).sum(1))

    def vectors(self, spec: TaskSpec) -> TaskVectors | None:
        if spec.task in PINTEXT:
            return None
        text = self.text_half(spec.regime)
        if spec.task == "related":
            pins = unit(np.concatenate([self.image, text], axis=1))  # (P, C + W)
            return TaskVectors(pins[spec.query_pins], pins[spec.corpus_pins])
        if not np.linalg.norm(text[spec.corpus_pins], axis=1).any():
            self.notes["search"] = NO_TEXT
            return None
        return TaskVectors(self.query_vectors(list(spec.query_texts)), text[spec.corpus_pins])

    def query_vectors(self, texts: list[str]) -> np.ndarray:
        from pinclip.models.text_states import compute_text_states

        rows = [[t or " "] + [""] * (len(TEXT_FIELDS) - 1) for t in texts]
        fields, _ = mean_pooled_fields(compute_text_states(self.backbone, rows, progress=False))
        return unit(fields[:, 0])  # (Q, W)


def frozen_config(base_cfg: Config) -> Config:
    """The towers of base_cfg with every backbone layer frozen and the same tokens per field."""
    cfg = copy.deepcopy(base_cfg)
    cfg.model.backbone.train_layers = 0
    cfg.model.vision.unfreeze_last = 0
    return cfg


def write_baseline_folder(folder: str | Path, meta: dict[str, Any], cfg: Config | None = None) -> Path:
    """Write an untrained baseline's folder (meta.json, config.yaml) atomically; returns it."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if cfg is not None:
        save_config(cfg, tmp / "config.yaml")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def create_frozen(base_cfg: Config, folder: str | Path) -> Path:
    """The frozen baseline's folder for the towers of base_cfg."""
    cfg = frozen_config(base_cfg)
    digest = hashlib.sha256(json.dumps(config_to_dict(cfg)["model"], sort_keys=True).encode()).hexdigest()[:12]
    meta = {"kind": "frozen", "baseline": "frozen", "version": f"frozen-{digest}", "dims": [],
            "text_pooling": "mean", "max_field_tokens": cfg.model.backbone.max_field_tokens,
            "pin": "concat(unit image, unit text) / sqrt(2)"}
    return write_baseline_folder(folder, meta, cfg)
