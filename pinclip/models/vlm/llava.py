"""LLaVA: a CLIP/SigLIP vision tower, a two-layer MLP projector, a Llama-style decoder.

One fixed-size image becomes the tower's patch tokens (the class token dropped under the
"default" feature strategy, kept under "full"), projected into the decoder's width: a square grid.
The defaults of `Family` fit it; only the class-token offset is LLaVA's own. LLaVA-NeXT and
OneVision (any-resolution tiles with row-end tokens) are other model types and are not covered.
"""

from __future__ import annotations

from pinclip.models.vlm.base import Family


class Llava(Family):
    name = "llava"
    model_types = ("llava",)
    vision_keys = ("pixel_values", "image_sizes")
