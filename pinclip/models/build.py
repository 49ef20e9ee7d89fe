"""The model a config describes: PinCLIP on the embedded towers, or PinCLIP on a pretrained VLM.

    model = build_model(cfg.model)   # VLMPinCLIP when cfg.model.vlm.path names a VLM folder
"""

from __future__ import annotations

from torch import nn

from pinclip.config import ModelConfig


def build_model(cfg: ModelConfig) -> nn.Module:
    """Raises UserError when the VLM folder or its settings cannot make a model."""
    if cfg.vlm.path:
        from pinclip.cli import UserError
        from pinclip.models.vlm.model import VLMPinCLIP

        try:
            return VLMPinCLIP(cfg)
        except (ValueError, OSError) as err:  # the user's folder or settings, said plainly
            raise UserError(str(err)) from None
    from pinclip.models.pinclip import PinCLIP

    return PinCLIP(cfg)


def is_vlm(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "cfg", None), "vlm", None) and model.cfg.vlm.path)
