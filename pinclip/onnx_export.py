"""`pinclip export --format onnx`: the three encoders as ONNX graphs, for ONNX Runtime, Triton and other stacks.

    pinclip export --checkpoint runs/mine/train/final --out runs/mine/onnx --format onnx

Writes into --out:
    image.onnx   pixels (B, 3, S, S) float32                                   -> embedding (B, D)
    text.onnx    ids (B, L) int64, mask (B, L) int64, field_ids (B,) int64      -> embedding (B, D)
    pin.onnx     pixels (B, 3, S, S), has_image (B,) bool, ids (B, F, L) int64,
                 mask (B, F, L) int64 (one row of tokens per text field)         -> embedding (B, D)
    tokenizer/   the backbone's tokenizer (Hugging Face files)
    onnx.json    model version, dims, the global int8 scale and zero-point, the text fields in order
                 (F), the image size S with the pixel mean and std, the tokens per field (L at most)

Each graph is a thin wrapper around the model's own public methods (`encode_image`, `encode_text`,
`encode_pin`, the backbone's `encode_prefix`), traced, so the export follows changes to the model.
Embeddings are L2-normalized at the full dim D; a Matryoshka prefix is x[:, :d] renormalized.
`onnx_feeds` builds the inputs from PIL images and pin dicts the way `Embedder` reads them.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pinclip.data.schema import TEXT_FIELDS, field_text
from pinclip.models.pinclip import hybrid_pin, late_fusion

WIDE = 1 << 20  # one length bucket for any batch: the graph must not depend on the traced batch's lengths
DYNAMIC = {"pixels": {0: "batch"}, "has_image": {0: "batch"}, "ids": {0: "batch", 1: "length"},
           "mask": {0: "batch", 1: "length"}, "field_ids": {0: "batch"}, "out": {0: "batch"}}
PIN_DYNAMIC = {**DYNAMIC, "ids": {0: "batch", 2: "length"}, "mask": {0: "batch", 2: "length"}}


class ImageEncoder(nn.Module):
    """pixels (B, 3, S, S) -> (B, D): the image-only mode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image({"pixels": pixels})


class TextEncoder(nn.Module):
    """ids, mask (B, L), field_ids (B,) -> (B, D): the text-only mode of one field per row."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, field_ids: torch.Tensor) -> torch.Tensor:
        states = self.model.backbone.encode_prefix(ids, mask.bool())  # (B, L, W)
        return self.model.encode_text(states, mask.bool(), field_ids, bucket=WIDE)


class PinEncoder(nn.Module):
    """pixels, has_image (B,), ids and mask (B, F, L) -> (B, D): the pin as the model forms it (fused, late or
    hybrid; pinclip.models.pinclip). Each field's tokens go through
    the backbone's prefix on their own (as the text states are made), then the present tokens of all fields
    are packed to the front in field order, as the batches the model trained on."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, has_image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
                ) -> torch.Tensor:
        b, f, length = ids.shape
        present = mask.bool()
        states = self.model.backbone.encode_prefix(ids.reshape(b * f, length), present.reshape(b * f, length))
        states = states.reshape(b, f * length, -1)  # (B, F·L, W)
        flat = present.reshape(b, f * length)  # (B, F·L)
        field = torch.arange(f, device=ids.device).repeat_interleave(length).expand(b, -1)  # (B, F·L)
        position = torch.arange(f * length, device=ids.device).expand(b, -1)  # (B, F·L)
        order = torch.argsort(position + (~flat).long() * f * length, dim=1)  # present tokens first, in order
        packed = torch.gather(states, 1, order.unsqueeze(-1).expand(-1, -1, states.shape[-1]))  # (B, F·L, W)
        batch = {"pixels": pixels, "has_image": has_image.bool(), "pin_states": packed,
                 "pin_mask": torch.gather(flat, 1, order), "pin_field_ids": torch.gather(field, 1, order)}
        mode = self.model.cfg.pin_mode
        if mode == "fused":
            return self.model.encode_pin(batch, bucket=WIDE)
        # late and hybrid pins: the unit image and each present field's unit text embedding, late-fused
        image = self.model.encode_image({"pixels": pixels})  # (B, D)
        field_ids = torch.arange(f, device=ids.device).repeat(b)  # (B·F,)
        text = self.model.encode_text(states.reshape(b * f, length, -1), present.reshape(b * f, length), field_ids,
                                      bucket=WIDE).reshape(b, f, -1)  # (B, F, D)
        late = late_fusion(image, has_image.bool(), text, present.any(-1))
        return late if mode == "late" else hybrid_pin(late, self.model.encode_pin(batch, bucket=WIDE), self.model.pin_gate)


def onnx_feeds(model: nn.Module, texts: list[str] | None = None, field: str = "title", images: list | None = None,
               pins: list[dict] | None = None) -> dict[str, np.ndarray]:
    """The inputs of text.onnx (texts), image.onnx (PIL images) or pin.onnx (dicts with `image` and text fields)."""
    from pinclip.models.features import pixels_batch

    cfg, backbone = model.cfg, model.backbone
    if texts is not None:
        ids, mask = backbone.tokenize([t or " " for t in texts])
        return {"ids": ids.numpy(), "mask": mask.long().numpy(),
                "field_ids": np.full(len(texts), TEXT_FIELDS.index(field), np.int64)}
    if images is not None:
        return {"pixels": pixels_batch([img.convert("RGB") for img in images], cfg.vision).numpy()}
    blank = np.zeros((3, cfg.vision.image_size, cfg.vision.image_size), np.float32)
    has_image = np.array([p.get("image") is not None for p in pins])
    present = [p["image"].convert("RGB") for p in pins if p.get("image") is not None]
    pixels = np.stack([blank] * len(pins)) if len(pins) else np.zeros((0, *blank.shape), np.float32)
    if present:
        pixels[has_image] = pixels_batch(present, cfg.vision).numpy()
    rows = [field_text(p.get(name)) for p in pins for name in TEXT_FIELDS]
    ids, mask = backbone.tokenize([r or "" for r in rows])  # (B·F, L)
    mask = mask & torch.tensor([bool(r) for r in rows]).unsqueeze(1)  # a missing field has no token
    shape = (len(pins), len(TEXT_FIELDS), ids.shape[1])
    return {"pixels": pixels, "has_image": has_image, "ids": ids.reshape(shape).numpy(),
            "mask": mask.long().reshape(shape).numpy()}


def _export(module: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], dynamic: dict, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints taken from shapes
        torch.onnx.export(module, inputs, str(path), input_names=names, output_names=["out"],
                          dynamic_axes={k: v for k, v in dynamic.items() if k in (*names, "out")}, opset_version=17,
                          dynamo=False)


def export_onnx(checkpoint: str | Path, out: str | Path) -> Path:
    """Write image.onnx, text.onnx, pin.onnx, tokenizer/ and onnx.json for the checkpoint into `out`."""
    from pinclip.cli import UserError
    from pinclip.models.build import is_vlm
    from pinclip.models.vision import pixel_stats
    from pinclip.train.checkpoint import load_model, replace_folder

    model, cfg, meta = load_model(checkpoint)
    if is_vlm(model):
        raise UserError(f"{checkpoint}: ONNX export covers the embedded towers; a VLM exports with --format hf")
    model = model.float().eval()
    out = Path(out)
    staging = out.with_name(f".{out.name}.onnx-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    size, length, fields = cfg.model.vision.image_size, cfg.model.backbone.max_field_tokens, len(TEXT_FIELDS)
    pixels = torch.zeros(2, 3, size, size)
    ids = torch.ones(2, length, dtype=torch.long)  # full length: the traced graph keeps every position
    _export(ImageEncoder(model), (pixels,), ["pixels"], DYNAMIC, staging / "image.onnx")
    _export(TextEncoder(model), (ids, torch.ones_like(ids), torch.tensor([0, 1])), ["ids", "mask", "field_ids"],
            DYNAMIC, staging / "text.onnx")
    pin_ids = torch.ones(2, fields, length, dtype=torch.long)
    _export(PinEncoder(model), (pixels, torch.tensor([True, False]), pin_ids, torch.ones_like(pin_ids)),
            ["pixels", "has_image", "ids", "mask"], PIN_DYNAMIC, staging / "pin.onnx")
    model.backbone.tokenizer.save_pretrained(str(staging / "tokenizer"))
    mean, std = pixel_stats(cfg.model.vision)
    info = {"version": meta["version"], "dims": meta["dims"], "quant": meta.get("quant"), "fields": list(TEXT_FIELDS),
            "pixels": "RGB, aspect-preserving resize onto a white S x S square, then (x / 255 - mean) / std",
            "image_size": size, "pixel_mean": mean, "pixel_std": std, "max_field_tokens": length,
            "exported_from": str(checkpoint)}
    (staging / "onnx.json").write_text(json.dumps(info, indent=1) + "\n")
    replace_folder(staging, out)
    return out
