"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: dynamic resolution, flattened patches, 3-D rotary positions.

The processor turns an image into flattened patches plus `image_grid_thw` (temporal, height, width
in patches); the vision tower's merger joins 2x2 neighbours, so an image becomes (h/2)·(w/2)
tokens in row-major order: that is the grid the global and regional tokens are pooled from.
Positions are the model's own M-RoPE index (`get_rope_index`). Qwen3-VL also adds vision features
from intermediate vision layers into the first decoder layers ("deepstack"); they travel with the
image's features and are passed to the language model at the image positions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pinclip.models.vlm.base import Family, ImageFeatures


class QwenVL(Family):
    name = "qwen-vl"
    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
    vision_keys = ("pixel_values", "image_grid_thw")

    def vision_modules(self, vlm: nn.Module) -> list[nn.Module]:
        return [vlm.model.visual]  # encoder and merger (the connector) in one module

    def vision_blocks(self, vlm: nn.Module) -> list[nn.Module]:
        return list(vlm.model.visual.blocks)

    def image_placeholder(self, processor: Any) -> str:
        tok = processor.tokenizer
        start = getattr(tok, "vision_start_token", None) or "<|vision_start|>"
        end = getattr(tok, "vision_end_token", None) or "<|vision_end|>"
        return f"{start}{processor.image_token}{end}"

    def limit_image_tokens(self, processor: Any, max_tokens: int) -> None:
        ip = processor.image_processor
        side = ip.patch_size * ip.merge_size  # pixels per merged token, per side
        size = dict(ip.size)  # a dict or transformers' SizeDict; longest_edge is the pixel budget
        size["longest_edge"] = max_tokens * side * side
        size["shortest_edge"] = min(size.get("shortest_edge", 0), size["longest_edge"])
        ip.size = type(ip.size)(**size)

    def select_images(self, vision: dict[str, torch.Tensor], index: list[int]) -> dict[str, torch.Tensor]:
        grid = vision["image_grid_thw"]  # (n, 3)
        sizes = grid.prod(-1).tolist()  # patches per image
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        patches = torch.cat([vision["pixel_values"][starts[i] : starts[i] + sizes[i]] for i in index])
        return {"pixel_values": patches, "image_grid_thw": grid[index]}

    def encode_images(self, vlm: nn.Module, vision: dict[str, torch.Tensor]) -> list[ImageFeatures]:
        out = vlm.model.get_image_features(**vision, return_dict=True)
        merge = vlm.model.visual.spatial_merge_size
        deep = getattr(out, "deepstack_features", None) or []  # per layer, per image (N, W)
        feats = []
        for i, (embeds, (_, h, w)) in enumerate(zip(out.pooler_output, vision["image_grid_thw"].tolist())):
            feats.append(ImageFeatures(embeds, (h // merge, w // merge), 0, [layer[i] for layer in deep]))
        return feats

    def position_ids(self, vlm: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                     image_grid: torch.Tensor | None) -> torch.Tensor:
        types = (ids == vlm.config.image_token_id).int()  # (B, L) 1 = image token, 0 = text
        positions, _ = vlm.model.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=image_grid,
                                                attention_mask=mask.long())
        return positions  # (3, B, L)

    def run_text_model(self, vlm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                       visual_mask: torch.Tensor, deepstack: list[torch.Tensor]) -> torch.Tensor:
        extra = {"visual_pos_masks": visual_mask, "deepstack_visual_embeds": deepstack} if deepstack else {}
        out = self.text_model(vlm)(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=positions,
                                   use_cache=False, **extra)
        return out.last_hidden_state
