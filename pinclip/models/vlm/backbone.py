"""A pretrained VLM from a local Hugging Face folder, ready to train: its family, processor, and
which weights learn (LoRA, the whole language model, or nothing), with layer-level checkpointing.

    backbone = VLMBackbone(cfg.model.vlm)   # cfg.vlm.path = "/models/Qwen2.5-VL-3B-Instruct"

Supported model types: see FAMILIES. The vision encoder and connector stay frozen unless
`lora_vision` puts adapters in the encoder, so their outputs can be cached per image.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pinclip.config import VLMConfig
from pinclip.models.lora import add_lora, base_model, lora_target_names
from pinclip.models.vlm.base import Family, load_processor
from pinclip.models.vlm.idefics3 import Idefics3
from pinclip.models.vlm.llava import Llava
from pinclip.models.vlm.qwen_vl import QwenVL

FAMILIES: tuple[Family, ...] = (QwenVL(), Idefics3(), Llava())
ATTENTION = ("sdpa", "eager", "flash_attention_2")


def supported_model_types() -> list[str]:
    return [t for f in FAMILIES for t in f.model_types]


def family_for(model_type: str, folder: str | Path) -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ValueError(f"{folder}: model type '{model_type}' is not a supported vision-language model; "
                     f"supported: {', '.join(supported_model_types())}")


def model_version(folder: str | Path) -> str:
    """A short id of the weights and processor, from content only (a moved folder keeps it): config
    and processor files, weight files' names, sizes and first MiB (cheap for a many-GB model)."""
    folder = Path(folder)
    model_type = json.loads((folder / "config.json").read_text()).get("model_type", "vlm")
    h = hashlib.sha1()
    for path in sorted(folder.iterdir()):
        if path.suffix in (".json", ".jinja", ".txt", ".model"):
            h.update(path.name.encode() + path.read_bytes())
        elif path.suffix in (".safetensors", ".bin"):
            with path.open("rb") as f:
                h.update(f"{path.name}:{path.stat().st_size}".encode() + f.read(1 << 20))
    return f"{model_type}-{h.hexdigest()[:12]}"


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if name in ("bf16", "fp32"):
        return torch.bfloat16 if name == "bf16" else torch.float32
    raise ValueError(f"model.vlm.dtype must be auto, bf16 or fp32, got {name!r}")


def check_attention(name: str) -> str:
    if name not in ATTENTION:
        raise ValueError(f"model.vlm.attn_implementation must be one of {', '.join(ATTENTION)}, got {name!r}")
    if name == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise ValueError("model.vlm.attn_implementation=flash_attention_2 needs the flash-attn package and "
                             "a CUDA GPU (pip install flash-attn); use sdpa")
    return name


def checkpoint_layers(layers: list[nn.Module]) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them.

    Hugging Face's own switch only acts in training mode; PinCLIP trains in eval mode (no
    dropout), so each layer's forward is wrapped here. Hooks on the module (FSDP's) stay outside.
    """
    for layer in layers:
        forward = layer.forward

        def run(*args, _forward=forward, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        layer.forward = run


class VLMBackbone(nn.Module):
    """A Hugging Face VLM (peft-wrapped under LoRA) with its processor and family."""

    pretrained = True  # its base weights load from the folder: checkpoints never copy them

    def __init__(self, cfg: VLMConfig) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModelForImageTextToText

        folder = Path(cfg.path)
        if not (folder / "config.json").is_file():
            raise ValueError(f"model.vlm.path={cfg.path!r}: not a Hugging Face model folder (no config.json)")
        config = AutoConfig.from_pretrained(str(folder))
        self.family = family_for(config.model_type, folder)
        self.processor = load_processor(folder)
        if cfg.max_image_tokens > 0:
            self.family.limit_image_tokens(self.processor, cfg.max_image_tokens)
        hf = AutoModelForImageTextToText.from_pretrained(
            str(folder), dtype=resolve_dtype(cfg.dtype), attn_implementation=check_attention(cfg.attn_implementation))
        self.model = self._trainable(hf.eval(), cfg)
        self.width: int = config.get_text_config().hidden_size
        self.image_token_id: int = int(self.hf.config.image_token_id)
        self.pad_token_id: int = int(self.processor.tokenizer.pad_token_id)
        if cfg.prompt not in ("auto", "chat", "plain"):
            raise ValueError(f"model.vlm.prompt must be auto, chat or plain, got {cfg.prompt!r}")
        has_template = bool(getattr(self.processor, "chat_template", None))
        self.use_chat = cfg.prompt == "chat" or (cfg.prompt == "auto" and has_template)
        self.version = model_version(folder)

    def _trainable(self, hf: nn.Module, cfg: VLMConfig) -> nn.Module:
        for p in hf.parameters():
            p.requires_grad_(False)
        text = self.family.text_model(hf)
        if cfg.finetune == "lora":
            targets = lora_target_names(hf, self.family, vision=cfg.lora_vision)
            model = add_lora(hf, targets, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
        elif cfg.finetune == "full":
            for p in [*text.layers.parameters(), *text.norm.parameters()]:
                p.requires_grad_(True)
            model = hf
        elif cfg.finetune == "frozen":
            model = hf
        else:
            raise ValueError(f"model.vlm.finetune must be lora, full or frozen, got {cfg.finetune!r}")
        if cfg.gradient_checkpointing:
            checkpoint_layers(list(text.layers) + (self.family.vision_blocks(hf) if cfg.lora_vision else []))
        return model

    @property
    def hf(self) -> nn.Module:
        """The Hugging Face model (under the LoRA wrapper, if any)."""
        return base_model(self.model)

    @property
    def device(self) -> torch.device:
        return self.hf.get_input_embeddings().weight.device

    def vision_frozen(self) -> bool:
        """True when nothing in the vision encoder or connector learns: its outputs can be cached."""
        return not any(p.requires_grad for m in self.family.vision_modules(self.hf) for p in m.parameters())
