"""Inference on a VLM checkpoint: the Embedder interface (serve, the embed job) over VLMPinCLIP.

    emb = Embedder.from_checkpoint("runs/vlm/export")    # returns a VLMEmbedder for a VLM checkpoint
    emb.embed_texts(["red apple"]); emb.embed_images([img]); emb.embed_pins([{"image": img, "title": "apple"}])

Images pass through the VLM's vision encoder once per call; with a cache folder and a frozen vision
side their features are read from (and written to) the vision cache, keyed as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pinclip.data.schema import TEXT_FIELDS, field_text
from pinclip.models.features import pixel_key
from pinclip.models.vlm.cache import VisionCache
from pinclip.models.vlm.inputs import embed_batches


class VLMEmbedder:
    def __init__(self, model, meta: dict, device: str = "cpu", cache_dir: str | Path | None = None,
                 cache_write: bool = True, batch_size: int = 16) -> None:
        from pinclip.quant import GlobalAffine

        self.model = model.to(device).eval()
        self.device, self.meta, self.batch_size = device, meta, batch_size
        self.version: str = meta["version"]
        self.dims: list[int] = list(meta["dims"])
        self.dim: int = self.dims[0]
        self.quant = GlobalAffine.from_dict(meta["quant"]) if meta.get("quant") else None
        self.cache = VisionCache.for_model(self.model, cache_dir)
        self.cache_write = cache_write

    def _features(self, images: list[Any]) -> list[Any]:
        """Cached vision features of the images (None where absent or uncached and not written)."""
        if self.cache is None:
            return [None] * len(images)
        keys = [pixel_key(img) if img is not None else None for img in images]
        missing = [i for i, k in enumerate(keys) if k is not None and k not in self.cache]
        if missing and self.cache_write:
            with torch.no_grad():
                feats = self.model.encode_image_features([images[i] for i in missing])
            self.cache.put([keys[i] for i in missing], [f.detached() for f in feats])
        return [self.cache.get(k) if k is not None else None for k in keys]

    def _run(self, images: list[Any], texts: list[list[str]], modes: Sequence[str]) -> dict[str, np.ndarray]:
        images = [img.convert("RGB") if img is not None else None for img in images]

        def batches():
            for lo in range(0, len(images), self.batch_size):
                part = images[lo : lo + self.batch_size]
                yield {"images": part, "texts": texts[lo : lo + self.batch_size], "image_features": self._features(part)}

        return embed_batches(self.model, batches(), modes)

    def embed_texts(self, texts: list[str], field: str = "title") -> np.ndarray:
        """Text-only embeddings (N, D), each text tagged as `field`."""
        f = TEXT_FIELDS.index(field)
        rows = [["" if i != f else (t or " ") for i in range(len(TEXT_FIELDS))] for t in texts]
        return self._run([None] * len(texts), rows, ("text",))["text"][:, f]

    def embed_images(self, images: list[Any]) -> np.ndarray:
        return self._run(list(images), [[""] * len(TEXT_FIELDS) for _ in images], ("image",))["image"]

    def embed_pins(self, pins: list[dict]) -> np.ndarray:
        """Fused embeddings (N, D) of dicts with `image` (PIL or None) and text fields."""
        return self.embed_pin_modes(pins, ("pin",))["pin"]

    def embed_pin_modes(self, pins: list[dict], modes: Sequence[str] = ("image", "pin")) -> dict[str, np.ndarray]:
        texts = [[field_text(p.get(f)) for f in TEXT_FIELDS] for p in pins]
        return self._run([p.get("image") for p in pins], texts, modes)
