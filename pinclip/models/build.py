"""The model a config describes: PinCLIP on the embedded towers, or PinCLIP on a pretrained VLM.

    model = build_model(cfg.model)   # VLMPinCLIP when cfg.model.vlm.path names a VLM folder
"""

from __future__ import annotations

from torch import nn

from pinclip.config import ModelConfig


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.vlm.path:
        from pinclip.models.vlm.model import VLMPinCLIP

        return VLMPinCLIP(cfg)
    from pinclip.models.pinclip import PinCLIP

    return PinCLIP(cfg)


def is_vlm(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "cfg", None), "vlm", None) and model.cfg.vlm.path)
