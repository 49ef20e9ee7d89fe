"""The interface through which PinCLIP drives one family of pretrained vision-language models.

A family module (`qwen_vl.py`, `idefics3.py`, `llava.py`) says, for one kind of Hugging Face VLM,
where its vision encoder, connector and language model sit, how its processor wants images, how
its vision outputs split per image and lie on a patch grid, and how it positions tokens. Prompts,
sequence assembly, pooling and heads (`model.py`) are the same for every family.

The defaults here fit a VLM whose `model.model.get_image_features(...)` returns one (N, W) tensor
per image and whose language model takes 1-D positions; families override what differs.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class ImageFeatures:
    """One image through the VLM's vision encoder and connector, in the language model's width W."""

    embeds: torch.Tensor  # (N, W) what fills the image's placeholder tokens, in their order
    grid_hw: tuple[int, int]  # the patch grid that global and regional tokens are pooled from ...
    grid_start: int = 0  # ... is embeds[grid_start : grid_start + h*w], row-major
    deepstack: list[torch.Tensor] = field(default_factory=list)  # (N, W) per injected layer (Qwen3-VL)

    def detached(self) -> ImageFeatures:
        """A CPU copy outside the autograd graph (what the cache stores)."""
        return ImageFeatures(self.embeds.detach().cpu(), self.grid_hw, self.grid_start,
                             [d.detach().cpu() for d in self.deepstack])

    def grid(self) -> torch.Tensor:
        """(W, h, w) the patch grid."""
        h, w = self.grid_hw
        tokens = self.embeds[self.grid_start : self.grid_start + h * w]  # (h*w, W)
        return tokens.T.reshape(-1, h, w)


class Family:
    """Defaults for one family of VLMs; subclasses override what their architecture does differently."""

    name = "base"
    model_types: tuple[str, ...] = ()
    vision_keys: tuple[str, ...] = ("pixel_values",)  # processor outputs the vision encoder reads

    # -- where things are -------------------------------------------------------------------
    def text_model(self, vlm: nn.Module) -> nn.Module:
        """The language model (decoder stack with `.layers`), called with inputs_embeds."""
        return vlm.model.language_model

    def vision_modules(self, vlm: nn.Module) -> list[nn.Module]:
        """Vision encoder and connector: frozen unless LoRA reaches into them."""
        return [vlm.model.vision_tower, vlm.model.multi_modal_projector]

    def vision_blocks(self, vlm: nn.Module) -> list[nn.Module]:
        """The vision encoder's transformer blocks (sharded one by one under FSDP)."""
        return list(vlm.model.vision_tower.vision_model.encoder.layers)

    # -- the processor ------------------------------------------------------------------------
    def image_placeholder(self, processor: Any) -> str:
        """What stands for one image in a prompt before the processor expands it."""
        return processor.image_token

    def images_argument(self, images: list[Any]) -> list[Any]:
        """The processor's `images=` for a batch of rows (one image or None per row)."""
        return [img for img in images if img is not None]

    def limit_image_tokens(self, processor: Any, max_tokens: int) -> None:
        """Cap the number of tokens one image becomes (only for dynamic-resolution families)."""

    def vision_inputs(self, processed: dict[str, Any], has_image: list[bool]) -> dict[str, torch.Tensor]:
        """The vision encoder's inputs, one entry per image in processing order (rows without one skipped)."""
        return {k: processed[k] for k in self.vision_keys if processed.get(k) is not None}

    def select_images(self, vision: dict[str, torch.Tensor], index: list[int]) -> dict[str, torch.Tensor]:
        """The vision inputs of images `index` (positions in processing order)."""
        return {k: v[index] for k, v in vision.items()}

    # -- the model ----------------------------------------------------------------------------
    def encode_images(self, vlm: nn.Module, vision: dict[str, torch.Tensor]) -> list[ImageFeatures]:
        out = vlm.model.get_image_features(**vision, return_dict=True)
        feats = []
        for embeds in out.pooler_output:  # (N, W) per image: side² patches, or a class token + side²
            side = int(embeds.shape[0] ** 0.5)
            feats.append(ImageFeatures(embeds, (side, side), embeds.shape[0] - side * side))
        return feats

    def position_ids(self, vlm: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                     image_grid: torch.Tensor | None) -> torch.Tensor:
        """(B, L) positions counted over the valid tokens only, so left padding changes nothing."""
        return (mask.long().cumsum(1) - 1).clamp_min(0)

    def run_text_model(self, vlm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                       visual_mask: torch.Tensor, deepstack: list[torch.Tensor]) -> torch.Tensor:
        """(B, L, W) last hidden states of the language model over inputs_embeds."""
        out = self.text_model(vlm)(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=positions,
                                   use_cache=False)
        return out.last_hidden_state


# -- processors --------------------------------------------------------------------------------

def load_processor(folder: str | Path) -> Any:
    """The folder's own processor, tokenizer left-padded.

    transformers 5 builds a video processor beside the image processor for Qwen-VL and SmolVLM,
    and video processors need torchvision. PinCLIP embeds images only, so when torchvision is
    missing (or a folder saved without one has no video settings) the family's processor is
    built without its video processor: the same image and text processing, videos refused.
    """
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(folder))
    except (ImportError, OSError) as err:
        if "torchvision" not in str(err).lower() and "video processor" not in str(err).lower():
            raise
        processor = _images_only_processor(Path(folder))
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token or processor.tokenizer.unk_token
    return processor


def _images_only_processor(folder: Path) -> Any:
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    settings: dict[str, Any] = {}
    for name in ("preprocessor_config.json", "processor_config.json"):  # the second may nest the first
        if (folder / name).is_file():
            settings.update(json.loads((folder / name).read_text()))
    cls = getattr(transformers, str(settings.get("processor_class")), None)
    if cls is None:
        raise ValueError(f"{folder}: cannot tell which processor the model uses (no processor_class)")
    chat = folder / "chat_template.jinja"
    if chat.is_file():
        settings["chat_template"] = chat.read_text()
    signature = inspect.signature(cls.__init__)
    params = [p for p in signature.parameters.values() if p.name != "video_processor"]
    names = [p.name for p in params[1:]]  # after self

    class ImagesOnly(cls):  # the family's processor with no video processor: the same image and text steps
        def __init__(self, *args, **kwargs):
            kwargs.update(zip(names, args))
            cls.__init__(self, video_processor=None, **kwargs)

    # its own signature lists what it saves (`to_dict`) and which sub-processors it holds
    ImagesOnly.__init__.__signature__ = signature.replace(parameters=params)
    ImagesOnly.__name__ = cls.__name__
    kwargs = {k: v for k, v in settings.items() if k in names and k not in ("image_processor", "tokenizer")}
    return ImagesOnly(AutoImageProcessor.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder)),
                      **kwargs)
