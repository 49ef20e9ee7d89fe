"""Neighbor alignment (Pin-to-Pin) loss: a pin and its graph neighbor against every other pin in view.

What it optimizes (InfoNCE, Oord et al. 2018): the embedding of each query row must score higher
against its positive (the row of its mined graph neighbor) than against every candidate: all other
rows of the global batch (anchors, their neighbors and any hard negatives, gathered from all ranks
with gradient) and, optionally, a memory bank of recent embeddings (a cross-batch memory, Wang et
al. 2020, "Cross-Batch Memory for Embedding Learning"; no gradient). Neighbors come from random
walks on the Pin–Board graph as in PinSage (Ying et al. 2018); taking all in-batch pins as negatives
and correcting for how often a pin is sampled follows the practice of PinSage/OmniSage and Yi et al.
2019 ("Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations", logQ).

Inputs (L2-normalized, b rows on this rank, N = world * b rows in the global batch, M bank rows):
    pin (b, D)            embeddings of the local rows (anchors, partners, hard negatives, ...)
    positive (b,)         global index of each row's positive; -1 = the row is not a query
    ignore (N, N) bool    pairs that are neither positive nor negative (shared board, same group,
                          the same pin twice); the diagonal is always ignored, the positive never
    log_q (N,) or None    log sampling probability of each row's pin: subtracted from its logit
    bank (M, D), bank_ignore (b, M), bank_log_q (M,): the memory bank, its ignored pairs and log q
Loss: the mean over all query rows of the global batch of -log softmax at the positive; the mean
over ranks of the rank losses equals the loss of one process holding the whole batch.
With an empty bank (M = 0) the value is the in-batch loss exactly.
"""

from __future__ import annotations

import torch

from pinclip.losses.gather import all_gather_no_grad, all_gather_with_grad, rank_and_world


def neighbor_loss(
    pin: torch.Tensor,
    positive: torch.Tensor,
    ignore: torch.Tensor | None,
    logit_scale: torch.Tensor,
    log_q: torch.Tensor | None = None,
    bank: torch.Tensor | None = None,
    bank_ignore: torch.Tensor | None = None,
    bank_log_q: torch.Tensor | None = None,
    name: str = "neighbor",
) -> dict[str, torch.Tensor]:
    """{name: loss}; see the module docstring."""
    rank, world = rank_and_world()
    b = pin.shape[0]
    _check_inputs(pin, positive, ignore, world, bank, bank_ignore)
    keys = all_gather_with_grad(pin)  # (N, D)
    n = keys.shape[0]
    rows = rank * b + torch.arange(b, device=pin.device)  # (b,) global index of local rows
    is_query = positive >= 0  # (b,)
    queries_global = (all_gather_no_grad(positive) >= 0).sum().clamp_min(1)
    scale = logit_scale.exp()
    logits = scale * pin @ keys.T  # (b, N)
    blocked = torch.zeros(b, n, dtype=torch.bool, device=pin.device) if ignore is None else ignore[rows].bool()
    blocked = blocked.clone()
    blocked[torch.arange(b), rows] = True  # never oneself
    blocked[is_query, positive[is_query]] = False  # never the positive
    if log_q is not None:
        logits = logits - log_q[None, :]
    logits = logits.masked_fill(blocked, torch.finfo(logits.dtype).min)
    if bank is not None and bank.shape[0]:
        bank_logits = scale * pin @ bank.detach().T  # (b, M)
        if bank_log_q is not None:
            bank_logits = bank_logits - bank_log_q[None, :]
        if bank_ignore is not None:
            bank_logits = bank_logits.masked_fill(bank_ignore.bool(), torch.finfo(logits.dtype).min)
        logits = torch.cat([logits, bank_logits], dim=1)  # (b, N + M)
    log_prob = logits.log_softmax(-1)  # (b, N [+ M])
    target = positive.clamp_min(0)
    nll = -log_prob.gather(1, target[:, None])[:, 0]  # (b,)
    return {name: (nll * is_query).sum() / (queries_global / world)}


def batch_positives(anchors: int, partners: int, extra: int, has_neighbor: torch.Tensor, world: int,
                    rank: int) -> torch.Tensor:
    """(b,) global positive index of each local row of a rank laid out [anchors; partners; extra rows].

    Rank r holds rows [r*b, (r+1)*b) of the gathered batch, b = anchors + partners + extra; anchor i's
    positive is partner i of the same rank and the other way round; rows without a neighbor
    (has_neighbor (anchors,) False) and extra rows are not queries (-1)."""
    b = anchors + partners + extra
    base = rank * b
    idx = torch.arange(anchors, device=has_neighbor.device)
    out = torch.full((b,), -1, dtype=torch.long, device=has_neighbor.device)
    out[:anchors] = torch.where(has_neighbor, base + anchors + idx, -1)
    out[anchors: anchors + partners] = torch.where(has_neighbor, base + idx, -1)
    return out


def _check_inputs(pin: torch.Tensor, positive: torch.Tensor, ignore: torch.Tensor | None, world: int,
                  bank: torch.Tensor | None, bank_ignore: torch.Tensor | None) -> None:
    if pin.dim() != 2:
        raise ValueError(f"expected pin embeddings (b, D), got {tuple(pin.shape)}")
    if positive.shape != (pin.shape[0],):
        raise ValueError(f"positive {tuple(positive.shape)} should be ({pin.shape[0]},)")
    n = world * pin.shape[0]
    if ignore is not None and tuple(ignore.shape) != (n, n):
        raise ValueError(f"ignore {tuple(ignore.shape)} should be (N, N) = {(n, n)} over the global batch")
    if bool((positive >= n).any()):
        raise ValueError(f"positive indices must be < N = {n}")
    if bank is not None and bank_ignore is not None and tuple(bank_ignore.shape) != (pin.shape[0], bank.shape[0]):
        raise ValueError(f"bank_ignore {tuple(bank_ignore.shape)} should be (b, M) = {(pin.shape[0], bank.shape[0])}")
