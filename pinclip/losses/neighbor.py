"""Neighbor alignment (Pin-to-Pin) loss over pins and neighbors mined from the Pin–Board graph.

What it optimizes: the fused embedding of pin i must score high against the fused embedding of
its mined neighbor (row i of `neighbor`) and low against the other neighbors of the global batch
(gathered from all ranks with gradient). DESIGN.md §3; the neighbors come from random walks with
restart as in PinSage (Ying et al. 2018, "Graph Convolutional Neural Networks for Web-Scale
Recommender Systems"), the objective follows CLIP / SigLIP.

Inputs (L2-normalized, B pairs on this rank, N = world*B pairs in the global batch):
    pin (B, D); neighbor (B, D); share_board (B, N) bool or None: True where local pin i and global
    neighbor j (itself a pin) share a board, so that pair is dropped (neither positive nor
    negative; the positive pair i == j is always kept); logit_scale: log of the logit multiplier;
    logit_bias: additive bias (SigLIP only).

Modes:
  "infonce": symmetric. pin -> neighbor: softmax over the global neighbors that are not dropped,
      positive = own neighbor; neighbor -> pin likewise (drops transposed). Mean over local rows,
      the two directions averaged.
  "siglip": one sigmoid problem per (pin i, neighbor j) pair, +1 for j == i and -1 otherwise,
      dropped pairs left out; summed over j and divided by B. Every pair of the global batch is
      counted once across ranks, so no second direction is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pinclip.losses.gather import all_gather_no_grad, all_gather_with_grad, rank_and_world
from pinclip.losses.image_text import MODES, ContrastiveMode


def neighbor_loss(
    pin: torch.Tensor,
    neighbor: torch.Tensor,
    share_board: torch.Tensor | None,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    mode: ContrastiveMode = "infonce",
) -> dict[str, torch.Tensor]:
    """{"neighbor": loss} for pins (B, D) against their neighbors (B, D); see module doc."""
    rank, world = rank_and_world()
    batch = pin.shape[0]
    _check_inputs(pin, neighbor, share_board, world, mode)
    all_pin = all_gather_with_grad(pin)  # (N, D)
    all_neighbor = all_gather_with_grad(neighbor)  # (N, D)
    row_ids = rank * batch + torch.arange(batch, device=pin.device)  # (B,) global index of local rows
    is_positive = row_ids[:, None] == torch.arange(all_pin.shape[0], device=pin.device)[None, :]  # (B, N)
    if share_board is None:
        share_board = torch.zeros_like(is_positive)
    dropped = share_board.bool() & ~is_positive  # (B, N) local pins vs global neighbors
    scale = logit_scale.exp()

    pin_to_neighbor = scale * pin @ all_neighbor.T  # (B, N)
    if mode == "siglip":
        bias = logit_bias if logit_bias is not None else torch.zeros((), device=pin.device)
        labels = is_positive.to(pin.dtype) * 2 - 1  # (B, N)
        nll = -F.logsigmoid(labels * (pin_to_neighbor + bias))  # (B, N)
        return {"neighbor": nll.masked_fill(dropped, 0.0).sum() / batch}

    all_share_board = all_gather_no_grad(share_board.bool())  # (N, N) global pins vs global neighbors
    dropped_transposed = all_share_board[:, row_ids].T & ~is_positive  # (B, N) local neighbors vs pins
    neighbor_to_pin = scale * neighbor @ all_pin.T  # (B, N)
    pin_rows = _positive_nll(pin_to_neighbor, dropped, row_ids)
    neighbor_rows = _positive_nll(neighbor_to_pin, dropped_transposed, row_ids)
    return {"neighbor": (pin_rows + neighbor_rows) / (2 * batch)}


def _positive_nll(logits: torch.Tensor, dropped: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Sum over rows of -log softmax at the positive column `ids`, dropped columns left out."""
    logits = logits.masked_fill(dropped, torch.finfo(logits.dtype).min)  # (B, N)
    log_prob = logits.log_softmax(-1)  # (B, N)
    return -log_prob.gather(1, ids[:, None]).sum()


def _check_inputs(
    pin: torch.Tensor, neighbor: torch.Tensor, share_board: torch.Tensor | None, world: int, mode: str
) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown contrastive mode {mode!r}; expected one of {MODES}")
    if pin.dim() != 2 or pin.shape != neighbor.shape:
        raise ValueError(
            f"expected pin and neighbor of the same shape (B, D), got {tuple(pin.shape)} and {tuple(neighbor.shape)}"
        )
    expected = (pin.shape[0], world * pin.shape[0])
    if share_board is not None and tuple(share_board.shape) != expected:
        raise ValueError(f"share_board {tuple(share_board.shape)} should be (B, world*B) = {expected}")
