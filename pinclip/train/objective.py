"""The training objective, summed over Matryoshka prefixes:

    L = w_it * L_image_text + w_pt * L_pin_text + lambda * L_neighbor + lambda_img * L_image_neighbor
        + w_b * L_board + w_kd * L_distill [+ L_quant]

    terms = objective(model, out, ctx, cfg=loss_cfg, dims=(256, 128, 64), bank=memory)
    terms["loss"].backward()

`out` is PinCLIP.forward's dict for this rank's rows [anchors; partners; hard negatives]; `ctx`
(BatchContext) carries the batch's global masks. Every term comes from pinclip.losses (negatives
gathered across ranks there):
- image_text / pin_text: the image (or fused pin) embedding against every present text field,
  multi-positive SigLIP or InfoNCE; duplicates in the batch (same group or normalized text) are
  neither positive nor negative (`mask_duplicates`), optionally pins sharing a board too.
- neighbor: each anchor against its partner and each partner against its anchor, every other row of
  the batch (and the memory bank) a negative except pins sharing a training board or duplicates;
  candidates' logits are corrected by their log sampling probability (`logq`).
- image_neighbor: the same on the image embeddings, so visual search learns what the graph knows.
- board: the pin against the titles of its training boards (query-like text the graph carries),
  multi-positive, pins sharing a board neither positive nor negative of each other's titles.
- distill: relational distillation of pins and text fields toward the frozen towers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from pinclip.config import LossConfig
from pinclip.data.schema import TEXT_FIELDS
from pinclip.losses.distill import relational_distillation
from pinclip.losses.gather import all_gather_no_grad, rank_and_world
from pinclip.losses.image_text import multi_positive_contrastive
from pinclip.losses.matryoshka import fake_quant_global_affine, matryoshka_loss
from pinclip.losses.memory import EmbeddingMemory
from pinclip.losses.neighbor import batch_positives, neighbor_loss


@dataclass
class BatchContext:
    """The global facts of a batch that the loss terms need, as tensors on the training device."""

    anchors: int  # anchor rows per rank (= partner rows)
    extra: int  # hard-negative rows per rank
    has_neighbor: torch.Tensor  # (anchors,) this rank's anchors that have a graph neighbor
    same: torch.Tensor  # (N, N) bool duplicates
    share_board: torch.Tensor  # (N, N) bool shared training board
    log_q: torch.Tensor  # (N,) log sampling probability of each row's pin
    rows: torch.Tensor  # (N,) pin row of each batch row (bank bookkeeping)
    canonical: torch.Tensor | None = None  # (N,) each row's position in [all anchors; all partners; all hard]
    bank_ignore: torch.Tensor | None = None  # (b, M) local rows vs bank entries not to use as negatives
    teacher_pin: torch.Tensor | None = None  # (b, W) frozen towers' pin of each local row (distillation)
    teacher_text: torch.Tensor | None = None  # (b, F, W') frozen text embedding of each field
    boards: np.ndarray | None = None  # (b, K) training boards whose titles join the batch, -1 padding


def field_weight_tensor(cfg: LossConfig, device: torch.device) -> torch.Tensor:
    return torch.tensor([float(cfg.field_weights.get(f, 1.0)) for f in TEXT_FIELDS], device=device)


def neighbor_ignore(ctx: BatchContext, cfg: LossConfig) -> torch.Tensor:
    """(N, N) pairs that are not neighbor negatives: shared board, duplicates and, with candidates
    "partners", rows of the same side (anchor vs anchor, partner vs partner) and hard rows."""
    ignore = ctx.share_board | ctx.same
    if cfg.neighbor_candidates == "partners":
        _, world = rank_and_world()
        role = torch.tensor([0] * ctx.anchors + [1] * ctx.anchors + [2] * ctx.extra, device=ignore.device)
        role = role.repeat(world)  # (N,) in the gathered, rank-blocked order
        ignore = ignore | (role[:, None] == role[None, :]) | (role[None, :] == 2)
    elif cfg.neighbor_candidates != "all":
        raise ValueError(f"loss.neighbor_candidates must be 'all' or 'partners', got {cfg.neighbor_candidates!r}")
    return ignore


def objective(model: torch.nn.Module, out: dict[str, torch.Tensor], ctx: BatchContext, cfg: LossConfig,
              dims: tuple[int, ...], bank: EmbeddingMemory | None = None) -> dict[str, torch.Tensor]:
    """Named loss terms and their weighted sum under "loss"."""
    device = next(v for v in out.values()).device
    terms: dict[str, torch.Tensor] = {}
    ignore_it = None
    if cfg.mask_duplicates:
        ignore_it = ctx.same | ctx.share_board if cfg.mask_boards_in_image_text else ctx.same
    contrastive = partial(multi_positive_contrastive, key_mask=out.get("text_mask"),
                          field_weights=field_weight_tensor(cfg, device), mode=cfg.image_text,
                          chunk_size=cfg.chunk_size or None, logit_scale=model.it_logit_scale,
                          logit_bias=model.it_logit_bias, ignore=ignore_it)
    if cfg.image_text_weight > 0:
        terms.update(matryoshka_loss(lambda query, keys: contrastive(query, keys, name="image_text"),
                                     {"query": out["image"], "keys": out["text"]}, dims))
        if cfg.pin_text_weight > 0:
            terms.update(matryoshka_loss(lambda query, keys: contrastive(query, keys, name="pin_text"),
                                         {"query": out["pin"], "keys": out["text"]}, dims))
    if cfg.neighbor_weight > 0 or cfg.image_neighbor_weight > 0:
        rank, world = rank_and_world()
        positive = batch_positives(ctx.anchors, ctx.anchors, ctx.extra, ctx.has_neighbor, world, rank)
        nb = partial(neighbor_loss, positive=positive, ignore=neighbor_ignore(ctx, cfg),
                     log_q=ctx.log_q if cfg.logq else None)
        if cfg.neighbor_weight > 0:
            use_bank = bank is not None and len(bank) > 0
            bank_q = bank.log_q if use_bank and cfg.logq else None

            def pin_neighbor(pin: torch.Tensor, bank: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
                return nb(pin, logit_scale=model.nb_logit_scale, bank=bank,
                          bank_ignore=ctx.bank_ignore if bank is not None else None, bank_log_q=bank_q)

            embeddings = {"pin": out["pin"], **({"bank": bank.embeddings} if use_bank else {})}
            terms.update(matryoshka_loss(pin_neighbor, embeddings, dims))
        if cfg.image_neighbor_weight > 0:
            terms.update(matryoshka_loss(lambda image: nb(image, logit_scale=model.nb_logit_scale,
                                                          name="image_neighbor"), {"image": out["image"]}, dims))
    if cfg.board_weight > 0 and "board_text" in out:
        board = partial(multi_positive_contrastive, key_mask=out["board_mask"], mode=cfg.image_text,
                        logit_scale=model.it_logit_scale, logit_bias=model.it_logit_bias,
                        ignore=ctx.share_board | ctx.same, name="board")
        terms.update(matryoshka_loss(lambda query, keys: board(query, keys),
                                     {"query": out["pin"], "keys": out["board_text"]}, dims))
    if cfg.distill_weight > 0:
        terms.update(_distillation(out, ctx, cfg))
    if cfg.quant_aware and cfg.image_text_weight > 0:
        terms.update(_quant_aware_term(out, contrastive))
    terms["loss"] = (cfg.image_text_weight * terms.get("image_text", 0.0)
                     + cfg.pin_text_weight * terms.get("pin_text", 0.0)
                     + cfg.neighbor_weight * terms.get("neighbor", 0.0)
                     + cfg.image_neighbor_weight * terms.get("image_neighbor", 0.0)
                     + cfg.board_weight * terms.get("board", 0.0)
                     + cfg.distill_weight * terms.get("distill", 0.0)
                     + terms.get("quant_image_text", 0.0))
    return terms


def _distillation(out: dict[str, torch.Tensor], ctx: BatchContext, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Relational distillation of the fused pin and of every present text field toward the frozen towers."""
    terms: dict[str, torch.Tensor] = {}
    if "pin" in out and ctx.teacher_pin is not None:
        terms.update(relational_distillation(out["pin"], ctx.teacher_pin, tau=cfg.distill_tau, name="distill_pin"))
    if "text" in out and ctx.teacher_text is not None:
        b, f, d = out["text"].shape
        terms.update(relational_distillation(out["text"].reshape(b * f, d), ctx.teacher_text.reshape(b * f, -1),
                                             valid=out["text_mask"].reshape(-1), tau=cfg.distill_tau,
                                             name="distill_text"))
    terms["distill"] = sum(terms.values())
    return terms


def _quant_aware_term(out, contrastive) -> dict[str, torch.Tensor]:
    """Image-text loss on embeddings after straight-through global int8 (range of the global batch,
    so N ranks quantize as one process does)."""
    with torch.no_grad():
        joint = torch.cat([out["image"].flatten(), out["text"][out["text_mask"]].flatten()])
        ends = all_gather_no_grad(torch.stack([joint.min(), joint.max()])[None])  # (world, 2)
        lo, hi = ends[:, 0].min().item(), ends[:, 1].max().item()
        scale = max(hi - lo, 1e-6) / 255.0
        zero_point = int(round(-128 - lo / scale))
    zero_point = max(-128, min(127, zero_point))
    q_img = fake_quant_global_affine(out["image"], scale, zero_point)
    q_txt = fake_quant_global_affine(out["text"], scale, zero_point) * out["text_mask"].unsqueeze(-1)
    return contrastive(q_img, q_txt, name="quant_image_text")
