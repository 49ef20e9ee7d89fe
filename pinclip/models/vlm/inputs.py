"""What a VLM run reads of a catalog: images (decoded per batch), field texts, cached vision features.

    inputs = prepare_vlm_inputs(model, pins, cache_dir="runs/cache", rank=0, world=1)
    batch = inputs.batch(rows)                            # VLMPinCLIP's input dict for pins `rows`
    emb = inputs.embed(model, rows, ("image", "pin"))     # numpy embeddings, no gradient

Setup scans every image once (readable? its pixel key), each rank a slice of the catalog. With a
frozen vision side, the ranks then fill the vision cache, each for its slice, so training never
runs the vision encoder twice on one image; otherwise there is no cache and the encoder runs (and
trains) every step. This is the VLM counterpart of the embedded model's image features and text
states, with the same three uses in the trainer: `batch`, `embed`, `has_image`/`has_text`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pinclip.models.features import ImageSource, load_rgb, pixel_key
from pinclip.models.text_states import field_strings
from pinclip.models.vlm.cache import VisionCache


@dataclass
class VLMInputs:
    images: Sequence[ImageSource]  # (P,) paths, bytes or PIL images
    texts: list[list[str]]  # (P, F) field strings, '' = missing
    has_image: np.ndarray  # (P,) bool: a readable image
    keys: list[str | None]  # (P,) pixel key of each readable image
    cache: VisionCache | None
    teacher_text: None = None  # no frozen-tower teacher to distill from (the trainer reads these two)
    title_states: None = None  # no board-title states (loss.board_weight is refused)

    @property
    def has_text(self) -> np.ndarray:
        return np.array([any(row) for row in self.texts])

    def batch(self, rows: np.ndarray, pin_keep: np.ndarray | None = None) -> dict[str, Any]:
        """{"images", "texts", "image_features"[, "pin_texts"]} of pins `rows`; `pin_keep` (B, F) the
        fields the fused prompt keeps (field dropout). The model moves tensors to its device itself."""
        images = [load_rgb(self.images[r]) if self.has_image[r] else None for r in rows]
        cached = [self.cache.get(self.keys[r]) if self.cache is not None and self.keys[r] else None for r in rows]
        batch = {"images": images, "texts": [self.texts[r] for r in rows], "image_features": cached}
        if pin_keep is not None:
            batch["pin_texts"] = [[t if keep else "" for t, keep in zip(self.texts[r], k)] for r, k in zip(rows, pin_keep)]
        return batch

    def embed(self, model, rows: np.ndarray, modes: Sequence[str] = ("image", "text", "pin"),
              device: torch.device | None = None, batch_size: int = 32) -> dict[str, np.ndarray]:
        """Embeddings of pins `rows`: image (N, D), pin (N, D), text (N, F, D) with text_mask (N, F)."""
        batches = (self.batch(rows[lo : lo + batch_size]) for lo in range(0, len(rows), batch_size))
        return embed_batches(model, batches, modes)


@torch.no_grad()
def embed_batches(model, batches, modes: Sequence[str]) -> dict[str, np.ndarray]:
    """The model's outputs over input dicts, as numpy arrays joined along the first axis (bf16
    autocast on a GPU)."""
    device = model.backbone.device
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(batch, modes=tuple(modes))
        for k, v in out.items():
            chunks.setdefault(k, []).append((v.float() if v.is_floating_point() else v).cpu().numpy())
    return {k: np.concatenate(v) for k, v in chunks.items()}


def check_training_config(cfg: Any) -> None:
    """UserError naming the training settings that act on the embedded towers only."""
    from pinclip.cli import UserError

    unsupported = [name for name, on in (("train.feature_noise", cfg.train.feature_noise > 0),
                                         ("train.token_dropout", cfg.train.token_dropout > 0),
                                         ("loss.distill_weight", cfg.loss.distill_weight > 0),
                                         ("loss.board_weight", cfg.loss.board_weight > 0)) if on]
    if unsupported:
        raise UserError(f"{', '.join(unsupported)} act on the embedded towers' cached features or text "
                        f"states; with a VLM backbone (model.vlm.path) set them to 0")


def prepare_vlm_inputs(model, pins: Any, cache_dir: str | Path | None, rank: int = 0, world: int = 1,
                       progress: bool = True) -> VLMInputs:
    """Scan the catalog's images and, for a frozen vision side, fill the vision cache (all ranks)."""
    keys, ok = scan_images(pins.images, rank, world, progress)
    cache = VisionCache.for_model(model, cache_dir)
    if cache is not None:
        fill_cache(model, pins.images, keys, cache, rank, world, progress)
        if dist.is_initialized():
            dist.barrier()
        cache.reload()
    return VLMInputs(pins.images, field_strings(pins.texts, len(pins)), ok, keys, cache)


def scan_images(sources: Sequence[ImageSource], rank: int, world: int, progress: bool
                ) -> tuple[list[str | None], np.ndarray]:
    """Pixel key of every readable image (None for a missing or unreadable one); ranks split the work."""
    mine = range(rank, len(sources), world)
    found = {}
    for i in tqdm(mine, desc="scan images", unit="img", disable=not progress or rank != 0 or None):
        img = load_rgb(sources[i])
        found[i] = pixel_key(img) if img is not None else None
    if world > 1 and dist.is_initialized():
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, found)
        found = {i: k for part in parts for i, k in part.items()}
    keys = [found.get(i) for i in range(len(sources))]
    return keys, np.array([k is not None for k in keys], dtype=bool)


@torch.no_grad()
def fill_cache(model, sources: Sequence[ImageSource], keys: list[str | None], cache: VisionCache, rank: int,
               world: int, progress: bool, batch_size: int = 16, shard_size: int = 512) -> None:
    """Vision features of this rank's share of the uncached images, written shard by shard."""
    todo, seen = [], set()
    for i, key in enumerate(keys):
        if key is not None and key not in cache and key not in seen:
            seen.add(key)
            todo.append(i)
    todo = todo[rank::world]
    new_keys, new_feats = [], []
    for lo in tqdm(range(0, len(todo), batch_size), desc="vision cache", unit="batch",
                   disable=not progress or rank != 0 or None):
        rows = todo[lo : lo + batch_size]
        feats = model.encode_image_features([load_rgb(sources[i]) for i in rows])
        new_keys += [keys[i] for i in rows]
        new_feats += [f.detached() for f in feats]
        if len(new_keys) >= shard_size:
            cache.put(new_keys, new_feats)
            new_keys, new_feats = [], []
    cache.put(new_keys, new_feats)
