"""LoRA adapters (peft) on a vision-language model: which layers, how to add them, how to merge them.

    vlm = add_lora(vlm, lora_target_names(vlm, family, vision=False), rank=16, alpha=32, dropout=0.0)
    vlm = merge_lora(vlm)   # a plain Hugging Face model with the adapters folded into its weights

Targets are every nn.Linear inside the language model's decoder layers (attention and MLP
projections), and optionally inside the vision encoder's blocks; embeddings, the LM head and the
connector stay as they are. The adapter weights are the only trained weights of the VLM, so a
PinCLIP checkpoint of a LoRA run holds them and the heads, never the base model.
"""

from __future__ import annotations

from torch import nn


def lora_target_names(vlm: nn.Module, family, vision: bool) -> list[str]:
    """Full module names of the nn.Linear layers LoRA wraps."""
    blocks = list(family.text_model(vlm).layers) + (family.vision_blocks(vlm) if vision else [])
    inside = {id(m) for block in blocks for m in block.modules() if isinstance(m, nn.Linear)}
    return [name for name, m in vlm.named_modules() if id(m) in inside]


def add_lora(vlm: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float) -> nn.Module:
    """A peft model: the base weights frozen, rank-r adapters on `targets` (B = 0: no change at start)."""
    from peft import LoraConfig, get_peft_model

    if rank <= 0:
        raise ValueError(f"model.vlm.lora_rank must be positive, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return get_peft_model(vlm, config)


def merge_lora(vlm: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights: W + (alpha/r)·B·A; returns the plain model."""
    from peft import PeftModel

    return vlm.merge_and_unload() if isinstance(vlm, PeftModel) else vlm


def base_model(vlm: nn.Module) -> nn.Module:
    """The Hugging Face model under a peft wrapper (the model itself when there is none)."""
    from peft import PeftModel

    return vlm.get_base_model() if isinstance(vlm, PeftModel) else vlm
