"""PinCLIP: a hybrid vision tower feeding multi-granularity visual tokens into a VLM backbone.

One model, three modes, one embedding space (docs/training.md):
    image-only  [summary; visual tokens]                  -> "image"  (visual search, ranker features)
    text-only   [summary; one field's tokens]              -> "text"   (queries, PinText)
    fused       [summary; visual tokens; all fields' tokens] -> "pin"  (related pins, cold start)
Visual tokens = global + regional (+ patch) pools of the vision grid, projected by an MLP into the
backbone's width and tagged by granularity; text tokens are tagged by field. The pooled state goes
through a linear head to the largest Matryoshka dim; every prefix is a valid, re-normalized embedding.

How "pin" is formed (cfg.pin_mode):
    fused   the fused pass alone (pure early fusion)
    late    unit(unit(image) + unit(sum of the present fields' text embeddings))   (two towers, `lit`)
    hybrid  unit(late + tanh(g) * fused), g a learned gate that starts at 0: an untrained hybrid pin
            *is* the late-fusion pin, and training adds only what the fused pass knows beyond it
With cfg.pool_balance the fused pass mean-pools each modality on its own and averages the present
modalities, so a title-only pin is half image, half text whatever its token counts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pinclip.config import ModelConfig
from pinclip.data.schema import TEXT_FIELDS
from pinclip.models.backbone import Backbone
from pinclip.models.vision import build_vision_tower, grid_to_tokens, num_visual_tokens

MODES: tuple[str, ...] = ("image", "text", "pin")


class PinCLIP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision = build_vision_tower(cfg.vision)
        self.backbone = Backbone(cfg.backbone)
        width, channels = self.backbone.width, self.vision.out_channels
        grid_side = self._grid_side()
        self.num_visual = num_visual_tokens(cfg.vision.regions, cfg.vision.patches, grid_side)
        g = torch.Generator().manual_seed(0)
        self.projector = nn.Sequential(
            nn.LayerNorm(channels), nn.Linear(channels, cfg.projector_hidden), nn.GELU(),
            nn.Linear(cfg.projector_hidden, width),
        )
        self.granularity = nn.Parameter(torch.randn(self.num_visual, width, generator=g) * 0.02)
        self.field_embed = nn.Parameter(torch.randn(len(TEXT_FIELDS), width, generator=g) * 0.02)
        self.summary = nn.Parameter(torch.randn(width, generator=g) * 0.02)
        if cfg.mode_tokens:  # image, text, fused: zero at the start, so training decides how they differ
            self.mode_embed = nn.Parameter(torch.zeros(len(MODES), width))
        self.head = nn.Linear(width, cfg.dims[0])
        # contrastive temperatures and biases (SigLIP init: scale 10, bias -10)
        self.it_logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.it_logit_bias = nn.Parameter(torch.tensor(-10.0))
        self.nb_logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.nb_logit_bias = nn.Parameter(torch.tensor(-10.0))
        if cfg.pin_mode == "hybrid":  # zero-init gate (Flamingo): the fused correction starts switched off
            self.pin_gate = nn.Parameter(torch.zeros(()))
        elif cfg.pin_mode not in ("fused", "late"):
            raise ValueError(f"model.pin_mode must be fused, late or hybrid, got {cfg.pin_mode!r}")

    @torch.no_grad()
    def _grid_side(self) -> int:
        size = self.cfg.vision.image_size
        was_training = self.vision.training
        self.vision.eval()
        side = self.vision(torch.zeros(1, 3, size, size)).shape[-1]
        self.vision.train(was_training)
        return int(side)

    # -- pieces -------------------------------------------------------------------------------
    def visual_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, W) projected visual tokens, from cached features or from pixels."""
        if "pixels" in batch:
            grid = self.vision(batch["pixels"])  # (B, C, h, w)
            feats = grid_to_tokens(grid, self.cfg.vision.regions, self.cfg.vision.patches)
        else:
            feats = batch["vis"]  # (B, T, C)
        return self.projector(feats.float()) + self.granularity  # (B, T, W)

    def summary_token(self, mode: str, b: int) -> torch.Tensor:
        """(B, 1, W) the summary token of a mode ("image", "text" or "pin")."""
        summary = self.summary + self.mode_embed[MODES.index(mode)] if self.cfg.mode_tokens else self.summary
        return summary.expand(b, 1, -1)

    def _encode(self, parts: list[tuple[torch.Tensor, torch.Tensor]], mode: str, visual: int | None = None
                ) -> torch.Tensor:
        """Joint sequence of (states (B, L, W), mask (B, L)) parts -> (B, D) normalized embedding.
        `visual`: the first `visual` tokens of the parts are visual, the rest text; with cfg.pool_balance
        and mean pooling each modality is then pooled on its own (modality_weights)."""
        b = parts[0][0].shape[0]
        summary = self.summary_token(mode, b)  # (B, 1, W)
        ones = torch.ones(b, 1, dtype=torch.bool, device=summary.device)
        if self.cfg.backbone.pooling == "last":
            parts = [*parts, (summary, ones)]
        else:
            parts = [(summary, ones), *parts]
        hidden = torch.cat([p[0] for p in parts], dim=1)  # (B, L, W)
        mask = torch.cat([p[1] for p in parts], dim=1)  # (B, L)
        out = self.backbone.encode_from_entry(hidden, mask)  # (B, L, W)
        if visual is not None and self.cfg.pool_balance and self.cfg.backbone.pooling == "mean":
            weights = modality_weights(mask, 1 + visual)  # (B, L): the summary is token 0, then `visual`
            pooled = (out * weights.unsqueeze(-1).to(out.dtype)).sum(1)  # (B, W)
        else:
            pooled = self._pool(out, mask)  # (B, W)
        return F.normalize(self.head(pooled), dim=-1)  # (B, D)

    def _pool(self, out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooling = self.cfg.backbone.pooling
        if pooling == "cls":
            return out[:, 0]
        if pooling == "last":
            last = mask.long().cumsum(1).argmax(1)  # (B,) index of the last valid token
            return out[torch.arange(out.shape[0]), last]
        m = mask.unsqueeze(-1).to(out.dtype)  # (B, L, 1)
        return (out * m).sum(1) / m.sum(1).clamp_min(1.0)

    # -- the three modes ----------------------------------------------------------------------
    def encode_image(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        vis = self.visual_tokens(batch)  # (B, T, W)
        mask = torch.ones(vis.shape[:2], dtype=torch.bool, device=vis.device)
        return self._encode([(vis, mask)], "image")

    def encode_text(self, states: torch.Tensor, mask: torch.Tensor, field_id: torch.Tensor,
                    bucket: int = 128) -> torch.Tensor:
        """(N, L, W) field states, (N, L) mask, (N,) field index -> (N, D)."""
        tagged = states.float() + self.field_embed[field_id].unsqueeze(1)  # (N, L, W)
        return self._bucketed(tagged, mask, mask.sum(1), 0, bucket, "text")

    def encode_pin(self, batch: dict[str, torch.Tensor], bucket: int = 128) -> torch.Tensor:
        vis = self.visual_tokens(batch)  # (B, T, W)
        vis_mask = batch["has_image"].unsqueeze(1).expand(-1, vis.shape[1])  # (B, T)
        text = batch["pin_states"].float() + self.field_embed[batch["pin_field_ids"]]  # (B, Lp, W)
        joint = torch.cat([vis, text], dim=1)  # (B, T + Lp, W): visual tokens, then the packed fields
        mask = torch.cat([vis_mask, batch["pin_mask"]], dim=1)  # (B, T + Lp)
        return self._bucketed(joint, mask, batch["pin_mask"].sum(1), vis.shape[1], bucket, "pin")

    def _bucketed(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, prefix: int,
                  bucket: int, mode: str) -> torch.Tensor:
        """Encode rows sorted by length in buckets, each trimmed to prefix + its longest row.

        Padding is masked anyway, so this equals encoding the whole padded batch (a test checks),
        without spending attention and MLP work on the padding of short rows.
        """
        if x.shape[0] == 0:  # no row (e.g. no text field in a batch of image-only pins)
            return x.new_zeros(0, self.head.out_features)
        order = torch.argsort(lengths)
        chunks = []
        for lo in range(0, x.shape[0], bucket):
            rows = order[lo : lo + bucket]
            width = prefix + max(int(lengths[rows].max()), 1 - min(prefix, 1))
            visual = prefix if mode == "pin" else None
            chunks.append(self._encode([(x[rows, :width], mask[rows, :width])], mode, visual))  # (b, D)
        return torch.cat(chunks)[torch.argsort(order)]  # (N, D) back in input order, autocast dtype kept

    def forward(self, batch: dict[str, torch.Tensor], modes: tuple[str, ...] = ("image", "text", "pin")
                ) -> dict[str, torch.Tensor]:
        """Returns {"image": (B, D), "text": (B, F, D), "text_mask": (B, F), "pin": (B, D)} for the modes asked.

        A late-fusion model (cfg.pin_mode "late", the two-tower recipe) forms "pin" from the image and
        text outputs instead of a fused pass: unit(unit(image) + unit(mean of its fields' embeddings)),
        the image part left out for a pin without an image. A hybrid model adds the gated fused pass to
        that (module docstring); its late part reads the fields the fused pass keeps (batch["pin_fields"],
        field dropout in training), so a title-only pin is trained as it is served."""
        out: dict[str, torch.Tensor] = {}
        if self.cfg.pin_mode in ("late", "hybrid") and "pin" in modes:
            modes = tuple(dict.fromkeys((*modes, "image", "text")))
        if "image" in modes:
            out["image"] = self.encode_image(batch)
        if "text" in modes:
            b = batch["pin_states"].shape[0]
            emb = self.encode_text(batch["field_states"], batch["field_mask"], batch["field_id"])  # (N, D)
            text = emb.new_zeros(b, len(TEXT_FIELDS), emb.shape[-1])  # (B, F, D)
            text[batch["field_pin"], batch["field_id"]] = emb
            text_mask = torch.zeros(b, len(TEXT_FIELDS), dtype=torch.bool, device=emb.device)
            text_mask[batch["field_pin"], batch["field_id"]] = True
            out["text"], out["text_mask"] = text, text_mask
        if "pin" in modes and self.cfg.pin_mode == "late":
            out["pin"] = late_fusion(out["image"], batch["has_image"], out["text"], out["text_mask"])
        elif "pin" in modes and self.cfg.pin_mode == "hybrid":
            kept = out["text_mask"] & batch["pin_fields"] if "pin_fields" in batch else out["text_mask"]
            late = late_fusion(out["image"], batch["has_image"], out["text"], kept)  # (B, D)
            out["pin"] = hybrid_pin(late, self.encode_pin(batch), self.pin_gate)
        elif "pin" in modes:
            out["pin"] = self.encode_pin(batch)
        return out


def hybrid_pin(late: torch.Tensor, fused: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """(B, D) unit(late + tanh(gate) * fused): at gate 0 exactly the late-fusion pin."""
    return F.normalize(late + torch.tanh(gate).to(late.dtype) * fused.to(late.dtype), dim=-1)


def modality_weights(mask: torch.Tensor, text_start: int) -> torch.Tensor:
    """(B, L) pooling weights of a fused sequence [summary; visual tokens; text tokens]: the mean of
    each present modality's tokens, the modalities averaged with equal weight (1/2 each with both, 1
    for the only one present); the summary token (position 0) gets none. Rows sum to 1 (0 when empty)."""
    m = mask.float()  # (B, L)
    vis, txt = m[:, 1:text_start], m[:, text_start:]  # (B, T), (B, Lt)
    n_vis, n_txt = vis.sum(1, keepdim=True), txt.sum(1, keepdim=True)  # (B, 1)
    present = ((n_vis > 0).float() + (n_txt > 0).float()).clamp_min(1.0)  # (B, 1)
    w_vis = vis / n_vis.clamp_min(1.0) / present
    w_txt = txt / n_txt.clamp_min(1.0) / present
    return torch.cat([torch.zeros_like(m[:, :1]), w_vis, w_txt], dim=1)  # (B, L)


def late_fusion(image: torch.Tensor, has_image: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor
                ) -> torch.Tensor:
    """(B, D) unit(unit(image) * has_image + unit(sum of the present fields' unit embeddings))."""
    text_part = F.normalize((text * text_mask.unsqueeze(-1).to(text.dtype)).sum(1), dim=-1)  # (B, D)
    image_part = image * has_image.unsqueeze(-1).to(image.dtype)  # (B, D) already unit
    return F.normalize(image_part + text_part, dim=-1)
