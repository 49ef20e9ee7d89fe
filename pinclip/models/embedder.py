"""Inference: embeddings of pins, images and texts from a checkpoint (the three modes of PinCLIP).

    emb = Embedder.from_checkpoint("runs/demo/train/final")
    emb.embed_texts(["red apple"])                      # (1, 256) text-only
    emb.embed_images([PIL.Image.open("apple.png")])      # (1, 256) image-only
    emb.embed_pins([{"image": img, "title": "apple"}])   # (1, 256) fused
    Embedder.from_checkpoint("runs/demo/mixed")          # a tower mix (pinclip.models.tower_mix): (N, 256 + C + W)

`embed_rows` is the same computation over a dataset whose image features and text states are
already computed (training-time validation, the evaluation harness, the batch job).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pinclip.data.schema import TEXT_FIELDS, field_text
from pinclip.models.features import FeatureCache, cache_tag, compute_tokens, image_features
from pinclip.models.pinclip import PinCLIP
from pinclip.models.text_states import TextStates, compute_text_states, text_batch


@torch.inference_mode()
def embed_rows(model: PinCLIP, vis: np.ndarray, has_image: np.ndarray, states: TextStates, rows: np.ndarray,
               modes: Sequence[str] = ("image", "text", "pin"), batch_size: int = 256,
               device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Embeddings of pins `rows`: image (N, D), pin (N, D), text (N, F, D) with text_mask (N, F)."""
    chunks: dict[str, list[np.ndarray]] = {}
    for lo in range(0, len(rows), batch_size):
        r = rows[lo : lo + batch_size]
        batch = text_batch(states, r)
        batch["vis"] = torch.from_numpy(vis[r].astype(np.float32))
        batch["has_image"] = torch.from_numpy(has_image[r])
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(batch, modes=tuple(modes))
        for k, v in out.items():
            chunks.setdefault(k, []).append((v.float() if v.is_floating_point() else v).cpu().numpy())
    return {k: np.concatenate(v) for k, v in chunks.items()}


class Embedder:
    """A trained PinCLIP ready to embed raw texts, images and pins."""

    def __init__(self, model: PinCLIP, meta: dict, device: str = "cpu", cache_dir: str | Path | None = None,
                 cache_write: bool = True):
        from pinclip.quant import GlobalAffine

        self.model = model.to(device).eval()
        self.device = device
        self.meta = meta
        self.version: str = meta["version"]
        self.dim: int = int(meta["dims"][0])
        self.dims: list[int] = list(meta["dims"])
        self.quant = GlobalAffine.from_dict(meta["quant"]) if meta.get("quant") else None
        # frozen-tower features by pixel content; read-only (cache_write=False) when serving
        self.cache = FeatureCache(cache_dir, cache_tag(self.model.vision, self.model.cfg.vision)) \
            if cache_dir is not None and not any(p.requires_grad for p in self.model.vision.parameters()) else None
        self.cache_write = cache_write
        self.fast_text: Any = None  # set by optimize(): pinclip.models.fast encoders
        self.fast_image: Any = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", cache_dir: str | Path | None = None,
                        cache_write: bool = True) -> Embedder:
        from pinclip.models.build import is_vlm
        from pinclip.models.tower_mix import MixedEmbedder, read_mixed, read_reduction
        from pinclip.train.checkpoint import load_model

        mixed = read_mixed(path)
        if mixed is not None:  # a tower-mix folder: the checkpoint it names, mixed with its towers
            inner = cls.from_checkpoint(mixed["checkpoint"], device, cache_dir, cache_write)
            return MixedEmbedder(inner, mixed["weight"], mixed, device, read_reduction(path, mixed))
        model, _, meta = load_model(path, device)
        if is_vlm(model):  # a VLM backbone: the same interface, its own inputs
            from pinclip.models.vlm.embedder import VLMEmbedder

            return VLMEmbedder(model, meta, device, cache_dir, cache_write)
        return cls(model, meta, device, cache_dir, cache_write)

    def optimize(self, backend: str = "auto", precision: str = "fp32") -> Embedder:
        """Route embed_texts, and embed_images when there is no feature cache, through the fast
        paths of pinclip.models.fast (see bench/results.md for their speed-ups); returns self.
        backend "auto" is ONNX Runtime when onnx and onnxruntime are installed, else torch."""
        from pinclip.models.fast import FastImageEncoder, FastTextEncoder, onnx_available

        if backend == "auto":
            backend = "onnx" if onnx_available() and precision == "fp32" else "torch"
        self.fast_text = FastTextEncoder(self.model, backend=backend, precision=precision)
        self.fast_image = FastImageEncoder(self.model, backend=backend, precision="fp32" if precision == "int8"
                                           else precision)
        return self

    def _states(self, texts: list[list[str]]) -> TextStates:
        return compute_text_states(self.model.backbone, texts, progress=False)

    def _vis(self, images: Sequence[Image.Image | None]) -> tuple[np.ndarray, np.ndarray]:
        present = [img for img in images if img is not None]
        if self.cache is not None and present:
            return image_features(self.model.vision, self.model.cfg.vision, list(images), self.cache,
                                  progress=False, write=self.cache_write)
        ok = np.array([img is not None for img in images])
        out = None
        if present:
            tokens = compute_tokens(self.model.vision, self.model.cfg.vision, [i.convert("RGB") for i in present])
            tokens = tokens.cpu().numpy().astype(np.float16)
            out = np.zeros((len(images), *tokens.shape[1:]), np.float16)
            out[ok] = tokens
        else:
            channels = self.model.vision.out_channels
            out = np.zeros((len(images), self.model.num_visual, channels), np.float16)
        return out, ok

    def embed_texts(self, texts: list[str], field: str = "title") -> np.ndarray:
        """Text-only embeddings (N, D); `field` picks the field tag (queries, title, ...)."""
        if self.fast_text is not None:
            return self.fast_text.embed(texts, field=field)
        f = TEXT_FIELDS.index(field)
        rows = [["" if i != f else (t or " ") for i in range(len(TEXT_FIELDS))] for t in texts]
        states = self._states(rows)
        out = embed_rows(self.model, np.zeros((len(texts), self.model.num_visual, self.model.vision.out_channels),
                                              np.float16),
                         np.zeros(len(texts), bool), states, np.arange(len(texts)), ("text",), device=self.device)
        return out["text"][:, f]

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        if self.fast_image is not None and self.cache is None:
            return self.fast_image.embed(images)
        vis, ok = self._vis(images)
        states = self._states([[""] * len(TEXT_FIELDS) for _ in images])
        return embed_rows(self.model, vis, ok, states, np.arange(len(images)), ("image",), device=self.device)["image"]

    def embed_pins(self, pins: list[dict]) -> np.ndarray:
        """Fused embeddings (N, D) of dicts with `image` (PIL or None) and text fields."""
        return self.embed_pin_modes(pins, ("pin",))["pin"]

    def embed_pin_modes(self, pins: list[dict], modes: Sequence[str] = ("image", "pin")) -> dict[str, np.ndarray]:
        """{"image": (N, D), "pin": (N, D)} of pins from one pass over their images and texts
        (an image row of a pin without an image is meaningless: mask it)."""
        vis, ok = self._vis([p.get("image") for p in pins])
        states = self._states([[field_text(p.get(f)) for f in TEXT_FIELDS] for p in pins])
        return embed_rows(self.model, vis, ok, states, np.arange(len(pins)), tuple(modes), device=self.device)
