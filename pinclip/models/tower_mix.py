"""A trained PinCLIP mixed with its own untrained towers in output space: the served "forget nothing" vector.

    emb = Embedder.from_checkpoint("runs/demo/mixed")   # a folder made by create_mixed(); a MixedEmbedder
    emb.embed_texts(["red apple"])                      # (1, D + C + W): [sqrt(1-w) * PinCLIP ; sqrt(w) * towers]

Fine-tuning on one catalog narrows what the pretrained towers knew about others; mixing the fine-tuned
and the untrained model keeps it (WiSE-FT, Wortsman et al. 2022, there in weight space). Here the two
are mixed in output space, so every embedding is one unit vector

    v = [ sqrt(1 - w) * pinclip(x) ; sqrt(w) * towers(x) ]

and an inner product is (1 - w) * PinCLIP's score + w * the towers' score. towers(x) lives in the
`frozen` baseline's [image | text] coordinates (C + W of them):
    image   [unit(global image feature) ; 0]
    text    [0 ; unit(mean-pooled text tower, every layer pretrained)]
    pin     unit([unit(image) ; unit(sum of its fields' unit text embeddings)])
Across modalities the towers share no space and add 0, so image<->text retrieval ranks exactly as
PinCLIP does. The weight w is chosen on the validation partition (`pinclip eval --tower-mix`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pinclip.data.schema import TEXT_FIELDS, field_text

KIND = "tower_mix"


def tower_mix(model: np.ndarray, towers: np.ndarray, weight: float) -> np.ndarray:
    """(N, D + D') [sqrt(1 - w) * model ; sqrt(w) * towers] of unit rows."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"tower-mix weight must be in [0, 1], got {weight}")
    return np.concatenate([math.sqrt(1.0 - weight) * model, math.sqrt(weight) * towers], axis=1).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def text_half(text: np.ndarray, image_width: int) -> np.ndarray:
    """(N, C + W) [0 ; unit text]: a text in the towers' [image | text] coordinates."""
    return np.concatenate([np.zeros((len(text), image_width), np.float32), unit(text)], axis=1)


def image_half(image: np.ndarray, text_width: int) -> np.ndarray:
    """(N, C + W) [image ; 0] of unit (or zero) image rows."""
    return np.concatenate([image, np.zeros((len(image), text_width), np.float32)], axis=1)


class Towers:
    """The untrained towers of a PinCLIP config: the text tower with every layer pretrained (mean-pooled,
    the sentence-embedding recipe) and the vision tower's global pooled feature."""

    def __init__(self, model_cfg: Any, vision: Any, device: str = "cpu") -> None:
        import copy

        from pinclip.models.backbone import Backbone

        cfg = copy.deepcopy(model_cfg.backbone)
        cfg.train_layers = 0
        self.backbone = Backbone(cfg).to(device).eval()
        self.image_width, self.text_width = int(vision.out_channels), int(self.backbone.width)

    def fields(self, texts: list[list[str]]) -> np.ndarray:
        """(P, F, W) unit text-tower embedding of every (pin, field); zero rows for empty fields."""
        from pinclip.baselines.frozen import mean_pooled_fields
        from pinclip.models.text_states import compute_text_states

        pooled, present = mean_pooled_fields(compute_text_states(self.backbone, texts, progress=False))
        return unit(pooled) * present[..., None]

    def text_rows(self, text: np.ndarray) -> np.ndarray:
        """(N, C + W) [0 ; unit text]."""
        return text_half(text, self.image_width)

    def image_rows(self, global_features: np.ndarray, has_image: np.ndarray) -> np.ndarray:
        """(N, C + W) [unit image ; 0]; zero rows for pins without an image."""
        image = unit(global_features.astype(np.float32)) * np.asarray(has_image, bool)[:, None]
        return image_half(image, self.text_width)

    def pin_rows(self, global_features: np.ndarray, has_image: np.ndarray, fields: np.ndarray) -> np.ndarray:
        """(N, C + W) unit([unit image ; unit(sum of the present fields' unit embeddings)])."""
        image = unit(global_features.astype(np.float32)) * np.asarray(has_image, bool)[:, None]
        return unit(np.concatenate([image, unit(fields.sum(1))], axis=1))


class MixedEmbedder:
    """The Embedder interface (texts, images, pins) over a PinCLIP checkpoint mixed with its towers."""

    def __init__(self, inner: Any, weight: float, meta: dict, device: str = "cpu") -> None:
        from pinclip.quant import GlobalAffine

        self.inner, self.weight, self.meta = inner, float(weight), meta
        self.towers = Towers(inner.model.cfg, inner.model.vision, device)
        self.version: str = str(meta["version"])
        self.dim: int = int(inner.dim) + self.towers.image_width + self.towers.text_width
        self.dims: list[int] = [self.dim]  # the concatenation has no Matryoshka prefixes
        self.quant = GlobalAffine.from_dict(meta["quant"]) if meta.get("quant") else None
        self.model = inner.model

    def optimize(self, backend: str = "auto", precision: str = "fp32") -> MixedEmbedder:
        self.inner.optimize(backend, precision)
        return self

    def embed_texts(self, texts: list[str], field: str = "title") -> np.ndarray:
        f = TEXT_FIELDS.index(field)
        rows = [["" if i != f else (t or " ") for i in range(len(TEXT_FIELDS))] for t in texts]
        towers = self.towers.text_rows(self.towers.fields(rows)[:, f])
        return tower_mix(self.inner.embed_texts(texts, field=field), towers, self.weight)

    def embed_images(self, images: list[Any]) -> np.ndarray:
        vis, ok = self.inner._vis(images)
        return tower_mix(self.inner.embed_images(images), self.towers.image_rows(vis[:, 0], ok), self.weight)

    def embed_pins(self, pins: list[dict]) -> np.ndarray:
        return self.embed_pin_modes(pins, ("pin",))["pin"]

    def embed_pin_modes(self, pins: list[dict], modes: Sequence[str] = ("image", "pin")) -> dict[str, np.ndarray]:
        vis, ok = self.inner._vis([p.get("image") for p in pins])
        fields = self.towers.fields([[field_text(p.get(f)) for f in TEXT_FIELDS] for p in pins])
        ours = self.inner.embed_pin_modes(pins, modes)
        out = {}
        if "image" in ours:
            out["image"] = tower_mix(ours["image"], self.towers.image_rows(vis[:, 0], ok), self.weight)
        if "pin" in ours:
            out["pin"] = tower_mix(ours["pin"], self.towers.pin_rows(vis[:, 0], ok, fields), self.weight)
        return out


def read_mixed(folder: str | Path) -> dict | None:
    """The meta of a tower-mix folder, or None when the folder is something else."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    return meta if meta.get("kind") == KIND else None


def create_mixed(checkpoint: str | Path, weight: float, folder: str | Path, quant: dict | None = None) -> Path:
    """Write a tower-mix folder over a checkpoint (meta.json, and towers/: the `frozen` baseline of its
    config, which the evaluation reads); `pinclip eval`, `embed` and `serve` load it. `quant`: global int8
    parameters fitted on mixed vectors (pinclip.eval.ensemble.calibrate_mixed); None: fitted where used."""
    import os
    import shutil

    import yaml

    from pinclip.baselines.frozen import create_frozen
    from pinclip.config import config_from_dict
    from pinclip.eval.encoders import resolve_checkpoint

    tower_mix(np.zeros((1, 1)), np.zeros((1, 1)), weight)  # checks the weight
    checkpoint = resolve_checkpoint(checkpoint)
    inner = json.loads((checkpoint / "meta.json").read_text())
    meta = {"kind": KIND, "checkpoint": str(checkpoint.resolve()), "weight": float(weight), "dims": [],
            "version": f"{inner['version']}-mix{round(100 * weight):02d}", "model_version": inner["version"]}
    if quant is not None:
        meta["quant"] = quant
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    create_frozen(config_from_dict(yaml.safe_load((checkpoint / "config.yaml").read_text())), tmp / "towers")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
