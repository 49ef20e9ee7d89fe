"""On-disk cache of a frozen VLM vision encoder's outputs, per image, keyed by model and processor.

When nothing in the vision encoder or connector trains (LoRA on the language model only), an
image's features (what fills its placeholder tokens, its patch grid, Qwen3-VL's deepstack
features) never change, so they are computed once and read back every step. They live in
safetensors shards under `<cache_dir>/vlm/<tag>/`, the tag naming the model weights, processor
files, image-token budget, dtype and transformers version (a new processor or resize rule is a
new tag, never a stale hit). Keys are the SHA-1 of decoded pixels, as for the embedded towers.
Shards are written whole under a temporary name and renamed; each process writes its own.
Reads are lazy (memory-mapped), so a catalog larger than RAM is fine.

    cache = VisionCache.for_model(model, "runs/cache")     # None when the vision side trains
    feats = cache.get(pixel_key(img))                      # ImageFeatures or None
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pinclip.models.vlm.base import ImageFeatures


class VisionCache:
    def __init__(self, root: str | Path, tag: str) -> None:
        self.dir = Path(root) / "vlm" / tag.replace("/", "_")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, tuple[int, int]] = {}  # key -> (shard, row)
        self.shards: list[tuple[object, torch.Tensor, torch.Tensor]] = []  # (file, offsets, grid)
        self.paths: set[Path] = set()
        self.written = 0
        self.reload()

    @classmethod
    def for_model(cls, model, root: str | Path | None) -> VisionCache | None:
        if root is None or not model.backbone.vision_frozen():
            return None
        return cls(root, cache_tag(model))

    def reload(self) -> None:
        """Pick up shards written since (by this or other processes)."""
        for path in sorted(self.dir.glob("shard-*.safetensors")):
            if path in self.paths:
                continue
            self.paths.add(path)
            f = safe_open(str(path), framework="pt")
            keys = json.loads(f.metadata()["keys"])
            shard = len(self.shards)
            self.shards.append((f, f.get_tensor("offsets"), f.get_tensor("grid")))
            self.index.update({k: (shard, i) for i, k in enumerate(keys)})

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def get(self, key: str) -> ImageFeatures | None:
        where = self.index.get(key)
        if where is None:
            return None
        f, offsets, grid = self.shards[where[0]]
        i = where[1]
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        h, w, start = grid[i].tolist()
        deep = []
        if "deepstack" in f.keys():  # type: ignore[attr-defined]
            deep = list(f.get_slice("deepstack")[:, lo:hi].unbind(0))  # type: ignore[attr-defined]
        return ImageFeatures(f.get_slice("embeds")[lo:hi], (h, w), start, deep)  # type: ignore[attr-defined]

    def put(self, keys: list[str], feats: list[ImageFeatures]) -> None:
        """One new shard holding `feats`, written atomically."""
        if not keys:
            return
        sizes = [f.embeds.shape[0] for f in feats]
        offsets = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()])
        tensors = {"embeds": torch.cat([f.embeds.detach().cpu() for f in feats]).contiguous(), "offsets": offsets,
                   "grid": torch.tensor([[*f.grid_hw, f.grid_start] for f in feats])}
        if feats[0].deepstack:
            layers = [torch.cat([f.deepstack[k].detach().cpu() for f in feats]) for k in range(len(feats[0].deepstack))]
            tensors["deepstack"] = torch.stack(layers).contiguous()  # (layers, N_total, W)
        name = f"shard-{os.getpid()}-{self.written:05d}.safetensors"
        tmp = self.dir / f".{name}.tmp"
        save_file(tensors, str(tmp), metadata={"keys": json.dumps(keys)})
        os.replace(tmp, self.dir / name)
        self.written += 1
        self.reload()


def cache_tag(model) -> str:
    """The model weights, processor files, image-token budget, dtype and transformers version."""
    import transformers

    vcfg, hf = model.vcfg, model.backbone.hf
    dtype = str(hf.get_input_embeddings().weight.dtype).replace("torch.", "")
    return f"{model.backbone.version}-t{vcfg.max_image_tokens}-{dtype}-tf{transformers.__version__}"
