"""Idefics3 and SmolVLM: a SigLIP encoder over image crops, pixel shuffle, a Llama-style decoder.

With image splitting the processor cuts an image into up to N crops plus the whole image scaled
down (last), pads the crops of a batch to the same count and marks real pixels in
`pixel_attention_mask`; the connector's pixel shuffle turns each crop into image_seq_len tokens
on a square grid. The global and regional tokens are pooled from the whole-image crop's grid.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pinclip.models.vlm.base import Family, ImageFeatures


class Idefics3(Family):
    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    vision_keys = ("pixel_values", "pixel_attention_mask")

    def text_model(self, vlm: nn.Module) -> nn.Module:
        return vlm.model.text_model

    def vision_modules(self, vlm: nn.Module) -> list[nn.Module]:
        return [vlm.model.vision_model, vlm.model.connector]

    def vision_blocks(self, vlm: nn.Module) -> list[nn.Module]:
        return list(vlm.model.vision_model.encoder.layers)

    def images_argument(self, images: list[Any]) -> list[Any]:
        return [[img] if img is not None else [] for img in images]  # one list of images per prompt

    def vision_inputs(self, processed: dict[str, Any], has_image: list[bool]) -> dict[str, torch.Tensor]:
        rows = [r for r, has in enumerate(has_image) if has]  # (n_images,) rows of the padded batch
        return {k: processed[k][rows] for k in self.vision_keys if processed.get(k) is not None}

    def encode_images(self, vlm: nn.Module, vision: dict[str, torch.Tensor]) -> list[ImageFeatures]:
        out = vlm.model.get_image_features(**vision, return_dict=True)
        config = vlm.config
        side = config.vision_config.image_size // config.vision_config.patch_size // config.scale_factor
        # every crop is side*side tokens; the whole image scaled down is the last crop
        return [ImageFeatures(e, (side, side), e.shape[0] - side * side) for e in out.pooler_output]
