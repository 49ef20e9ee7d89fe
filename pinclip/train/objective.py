"""The training objective: L = w_it·L_image_text + w_pt·L_pin_text + λ·L_neighbor, over Matryoshka prefixes.

    terms = objective(model, out, anchors=B/2, share_board=mask, cfg=loss_cfg, dims=(256, 128, 64))
    terms["loss"].backward()

`out` is PinCLIP.forward's dict for a local batch laid out [anchors; partners]; every term comes
from pinclip.losses (negatives gathered across ranks there).
"""

from __future__ import annotations

from functools import partial

import torch

from pinclip.config import LossConfig
from pinclip.data.schema import TEXT_FIELDS
from pinclip.losses.image_text import multi_positive_contrastive
from pinclip.losses.matryoshka import fake_quant_global_affine, matryoshka_loss
from pinclip.losses.neighbor import neighbor_loss


def field_weight_tensor(cfg: LossConfig, device: torch.device) -> torch.Tensor:
    return torch.tensor([float(cfg.field_weights.get(f, 1.0)) for f in TEXT_FIELDS], device=device)


def objective(model: torch.nn.Module, out: dict[str, torch.Tensor], anchors: int,
              share_board: torch.Tensor, has_neighbor: torch.Tensor, cfg: LossConfig,
              dims: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Named loss terms and their weighted sum under "loss".

    share_board (A_local, A_global) drops pairs that share a board; rows (and columns) of anchors
    without a graph neighbor are dropped entirely so they add nothing to the neighbor term.
    """
    device = next(v for v in out.values()).device
    weights = field_weight_tensor(cfg, device)
    mask = out["text_mask"]
    terms: dict[str, torch.Tensor] = {}
    contrastive = partial(multi_positive_contrastive, key_mask=mask, field_weights=weights, mode=cfg.image_text,
                          chunk_size=cfg.chunk_size or None)
    if cfg.image_text_weight > 0:
        it = partial(contrastive, logit_scale=model.it_logit_scale, logit_bias=model.it_logit_bias, name="image_text")
        terms.update(matryoshka_loss(lambda query, keys: it(query, keys), {"query": out["image"], "keys": out["text"]}, dims))
        if cfg.pin_text_weight > 0:
            terms.update(matryoshka_loss(lambda query, keys: contrastive(
                query, keys, logit_scale=model.it_logit_scale, logit_bias=model.it_logit_bias, name="pin_text"),
                {"query": out["pin"], "keys": out["text"]}, dims))
    if cfg.neighbor_weight > 0:
        drop = share_board.clone()
        invalid = ~has_neighbor  # (A_global,)
        drop[:, invalid] = True
        drop[invalid[_local_rows(drop, has_neighbor)]] = True
        nb = partial(neighbor_loss, share_board=drop, logit_scale=model.nb_logit_scale, logit_bias=model.nb_logit_bias)
        terms.update(matryoshka_loss(lambda pin, neighbor: nb(pin, neighbor),
                                     {"pin": out["pin"][:anchors], "neighbor": out["pin"][anchors:]}, dims))
    if cfg.quant_aware and cfg.image_text_weight > 0:
        terms.update(_quant_aware_term(model, out, contrastive))
    total = cfg.image_text_weight * terms.get("image_text", 0.0) + cfg.pin_text_weight * terms.get("pin_text", 0.0) \
        + cfg.neighbor_weight * terms.get("neighbor", 0.0) + terms.get("quant_image_text", 0.0)
    terms["loss"] = total
    return terms


def _local_rows(drop: torch.Tensor, has_neighbor: torch.Tensor) -> torch.Tensor:
    """Global indices of this rank's anchor rows (drop has A_local rows of A_global)."""
    from pinclip.losses.gather import rank_and_world

    rank, _ = rank_and_world()
    local = drop.shape[0]
    return torch.arange(rank * local, (rank + 1) * local, device=has_neighbor.device)


def _quant_aware_term(model, out, contrastive) -> dict[str, torch.Tensor]:
    """Image-text loss on embeddings after straight-through global int8 (range of this batch)."""
    with torch.no_grad():
        joint = torch.cat([out["image"].flatten(), out["text"][out["text_mask"]].flatten()])
        lo, hi = joint.min().item(), joint.max().item()
        scale = max(hi - lo, 1e-6) / 255.0
        zero_point = int(round(-128 - lo / scale))
    zero_point = max(-128, min(127, zero_point))
    q_img = fake_quant_global_affine(out["image"], scale, zero_point)
    q_txt = fake_quant_global_affine(out["text"], scale, zero_point) * out["text_mask"].unsqueeze(-1)
    value = contrastive(q_img, q_txt, logit_scale=model.it_logit_scale, logit_bias=model.it_logit_bias,
                        name="quant_image_text")
    return value
