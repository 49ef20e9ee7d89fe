"""The harness's encoder for a VLM checkpoint: a fine-tuned VLM run, its export, or a pretrained VLM
embedder scored zero-shot (pinclip.baselines.vlm_embedder).

    encoder = load_encoder("runs/vlm/train/final")    # chosen by meta.json: it names a vlm_version
    encoder.prepare(dataset.pins, cache_dir, progress=True)

The same tasks, regimes, pin representation and queries as a PinCLIP checkpoint (ModelEncoder), only
the inputs differ: images and texts go to the VLM as prompts (the vision cache spares the encoder a
second pass over an image), and a regime's dropped fields are left out of the fused prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pinclip.eval.encoders import ModelEncoder
from pinclip.eval.tasks import pin_fields, regime_mask


class VLMEncoder(ModelEncoder):
    def __init__(self, checkpoint: str | Path, device: str = "cpu") -> None:
        super().__init__(checkpoint, device)
        self.kind = str(self.meta.get("kind", "pinclip"))

    def prepare(self, pins: Any, cache_dir: str | Path | None, progress: bool) -> None:
        from pinclip.models.vlm.inputs import prepare_vlm_inputs

        self.inputs = prepare_vlm_inputs(self.model, pins, cache_dir, progress=progress)
        self.fields = pin_fields(pins.pin_ids, pins.texts)
        self.progress = progress
        self._cache.clear()

    def _embed(self, modes: tuple[str, ...], regime: str = "full", chunk: int = 32) -> dict[str, np.ndarray]:
        """Every catalog pin in `modes`, the fused prompt showing the regime's fields only."""
        from pinclip.models.vlm.inputs import embed_batches

        keep = regime_mask(self.fields, regime)  # (P, F)
        starts = range(0, len(self.fields), chunk)
        batches = (self.inputs.batch(np.arange(lo, min(lo + chunk, len(self.fields))),
                                     pin_keep=keep[lo : lo + chunk])
                   for lo in tqdm(starts, desc=f"embed {'+'.join(modes)} ({regime})", unit="batch",
                                  disable=not self.progress or None))
        return embed_batches(self.model, batches, modes)

    def query_vectors(self, texts: list[str], field: str = "queries") -> np.ndarray:
        from pinclip.models.vlm.embedder import VLMEmbedder

        return VLMEmbedder(self.model, self.meta, self.device).embed_texts(texts, field=field)
