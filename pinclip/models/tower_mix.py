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

The towers' half can be made smaller (`--towers-dims IMAGE,TEXT`, a TowerReduction): each block is
projected on its top singular directions (uncentred: the best rank-k approximation of the towers' inner
products), fitted on the training pins' tower vectors only, then renormalized; zero rows (no image, no
text) stay zero, so the blocks still add 0 across modalities.
The demo's 256 + 1280 + 384 = 1920 dimensions become 256 + IMAGE + TEXT.
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
REDUCTION_FILE = "towers_reduction.npz"


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


class TowerReduction:
    """Each block of the towers' half projected on its top singular directions (module docstring)."""

    def __init__(self, image_mean: np.ndarray, image_basis: np.ndarray, text_mean: np.ndarray,
                 text_basis: np.ndarray) -> None:
        self.image_mean, self.image_basis = image_mean.astype(np.float32), image_basis.astype(np.float32)
        self.text_mean, self.text_basis = text_mean.astype(np.float32), text_basis.astype(np.float32)

    @property
    def dims(self) -> tuple[int, int]:
        return int(self.image_basis.shape[1]), int(self.text_basis.shape[1])

    @property
    def tag(self) -> str:
        """IxT, and "c" when the blocks were centred: part of the mix's version."""
        return "{}x{}".format(*self.dims) + ("c" if self.image_mean.any() or self.text_mean.any() else "")

    @classmethod
    def fit(cls, image: np.ndarray, text: np.ndarray, dims: tuple[int, int], center: bool = False) -> TowerReduction:
        """Top right singular directions of unit image rows (N, C) and unit text rows (M, W), dims[0] and dims[1] of
        them: of the rows as they are (the best rank-k approximation of their inner products), or with `center`
        of the rows less their mean (principal components)."""
        return cls(*_pca(image, dims[0], "image", center), *_pca(text, dims[1], "text", center))

    def image(self, x: np.ndarray) -> np.ndarray:
        """(N, C) unit or zero rows -> (N, IMAGE) unit or zero rows."""
        return _project(x, self.image_mean, self.image_basis)

    def text(self, x: np.ndarray) -> np.ndarray:
        """(N, W) unit or zero rows -> (N, TEXT) unit or zero rows."""
        return _project(x, self.text_mean, self.text_basis)

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, image_mean=self.image_mean, image_basis=self.image_basis, text_mean=self.text_mean,
                     text_basis=self.text_basis)

    @classmethod
    def load(cls, path: str | Path) -> TowerReduction:
        with np.load(path) as z:
            return cls(z["image_mean"], z["image_basis"], z["text_mean"], z["text_basis"])


def _pca(x: np.ndarray, k: int, what: str, center: bool = False) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    if not 0 < k <= min(x.shape):
        raise ValueError(f"cannot keep {k} singular directions of {len(x)} {what} rows of width {x.shape[1]}")
    mean = x.mean(0) if center else np.zeros(x.shape[1])
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:k].T


def _project(x: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    present = np.linalg.norm(x, axis=1, keepdims=True) > 0
    return (unit((x - mean) @ basis) * present).astype(np.float32)


def reduce_image(x: np.ndarray, reduction: TowerReduction | None) -> np.ndarray:
    return x if reduction is None else reduction.image(x)


def reduce_text(x: np.ndarray, reduction: TowerReduction | None) -> np.ndarray:
    return x if reduction is None else reduction.text(x)


def read_reduction(folder: str | Path, meta: dict) -> TowerReduction | None:
    """The reduction of a tower-mix folder, None when its towers' half is full size."""
    return TowerReduction.load(Path(folder) / REDUCTION_FILE) if meta.get("towers_dims") else None


class Towers:
    """The untrained towers of a PinCLIP config: the text tower with every layer pretrained (mean-pooled,
    the sentence-embedding recipe) and the vision tower's global pooled feature."""

    def __init__(self, model_cfg: Any, vision: Any, device: str = "cpu", reduction: TowerReduction | None = None) -> None:
        import copy

        from pinclip.models.backbone import Backbone

        cfg = copy.deepcopy(model_cfg.backbone)
        cfg.train_layers = 0
        self.backbone = Backbone(cfg).to(device).eval()
        self.reduction = reduction
        self.image_width, self.text_width = (int(vision.out_channels), int(self.backbone.width)) \
            if reduction is None else reduction.dims

    def fields(self, texts: list[list[str]]) -> np.ndarray:
        """(P, F, W) unit text-tower embedding of every (pin, field); zero rows for empty fields."""
        from pinclip.baselines.frozen import mean_pooled_fields
        from pinclip.models.text_states import compute_text_states

        pooled, present = mean_pooled_fields(compute_text_states(self.backbone, texts, progress=False))
        return unit(pooled) * present[..., None]

    def text_rows(self, text: np.ndarray) -> np.ndarray:
        """(N, C + W) [0 ; unit text]."""
        return text_half(reduce_text(unit(text), self.reduction), self.image_width)

    def _image(self, global_features: np.ndarray, has_image: np.ndarray) -> np.ndarray:
        image = unit(global_features.astype(np.float32)) * np.asarray(has_image, bool)[:, None]
        return reduce_image(image, self.reduction)

    def image_rows(self, global_features: np.ndarray, has_image: np.ndarray) -> np.ndarray:
        """(N, C + W) [unit image ; 0]; zero rows for pins without an image."""
        return image_half(self._image(global_features, has_image), self.text_width)

    def pin_rows(self, global_features: np.ndarray, has_image: np.ndarray, fields: np.ndarray) -> np.ndarray:
        """(N, C + W) unit([unit image ; unit(sum of the present fields' unit embeddings)])."""
        text = reduce_text(unit(fields.sum(1)), self.reduction)
        return unit(np.concatenate([self._image(global_features, has_image), text], axis=1))


class MixedEmbedder:
    """The Embedder interface (texts, images, pins) over a PinCLIP checkpoint mixed with its towers."""

    def __init__(self, inner: Any, weight: float, meta: dict, device: str = "cpu",
                 reduction: TowerReduction | None = None) -> None:
        from pinclip.quant import GlobalAffine

        self.inner, self.weight, self.meta = inner, float(weight), meta
        self.towers = Towers(inner.model.cfg, inner.model.vision, device, reduction)
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


def create_mixed(checkpoint: str | Path, weight: float, folder: str | Path, quant: dict | None = None,
                 reduction: TowerReduction | None = None) -> Path:
    """Write a tower-mix folder over a checkpoint (meta.json, and towers/: the `frozen` baseline of its
    config, which the evaluation reads); `pinclip eval`, `embed` and `serve` load it. `quant`: global int8
    parameters fitted on mixed vectors (pinclip.eval.ensemble.calibrate_mixed); None: fitted where used.
    `reduction`: the towers' half made smaller (pinclip.eval.ensemble.fit_towers_reduction); None: full size."""
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
    if reduction is not None:
        meta["towers_dims"] = list(reduction.dims)
        meta["version"] += f"-r{reduction.tag}"
        reduction.save(tmp / REDUCTION_FILE)
    create_frozen(config_from_dict(yaml.safe_load((checkpoint / "config.yaml").read_text())), tmp / "towers")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
