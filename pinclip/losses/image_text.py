"""Multi-positive contrastive loss between one embedding per pin and its several text fields.

What it optimizes: a query embedding of pin i (its image, or its fused pin embedding) must score
high against every *present* text field of pin i and low against the fields of every other pin in
the global batch (negatives gathered from all ranks with gradient). docs/training.md, "The terms".

Inputs (L2-normalized embeddings, B pins on this rank, F text fields, D dims):
    query (B, D); keys (B, F, D); key_mask (B, F) bool, False = field missing; field_weights (F,);
    logit_scale: log of the logit multiplier (learnable; scale = exp(logit_scale));
    logit_bias: learnable additive bias (SigLIP only).
A missing field is neither a positive nor a negative: its embedding has no effect on the value and
receives exactly zero gradient. `ignore` (N, N) bool over the global batch (optional) marks pairs of
pins (i, j), i != j, that are neither positive nor negative: duplicates of one another (same group,
identical text) that a plain contrastive loss would push apart while they say the same thing.

Modes:
  "siglip" (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training"): every (query i,
      field f of pin j) pair is a binary problem, label +1 when j == i and -1 otherwise:
      -log sigmoid(label * (exp(logit_scale) * <q_i, k_jf> + logit_bias)). Within each pin j the
      field terms are averaged with field_weights over the present fields, so every (i, j) pair
      of pins weighs one; summed over j, divided by the local batch size B (as in big_vision).
  "infonce" (Radford et al. 2021, CLIP; multi-positive form of Khosla et al. 2020, SupCon L_out):
      query->text: softmax over all present fields of all gathered pins; the loss of query i is the
      field_weights-weighted *average over its positives of -log softmax* (each positive competes
      with the other positives too). text->query: each present field of pin i, softmax over all
      gathered queries, positive = query i; averaged per pin with field_weights. Both directions are
      averaged over the pins that have a present field (counted over the global batch) and the two
      directions are averaged.
With equal batch sizes on every rank, the mean over ranks of the loss equals the loss of one
process holding the whole batch.

`chunk_size` computes the terms over chunks of local rows under activation checkpointing, so the
(B, world*B, F) logits never exist at once; values and gradients equal the full computation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from pinclip.losses.gather import all_gather_no_grad, all_gather_with_grad, rank_and_world

ContrastiveMode = Literal["siglip", "infonce"]
MODES: tuple[str, ...] = ("siglip", "infonce")


def initial_logit_scale_and_bias(mode: ContrastiveMode, batch_size: int | None = None) -> tuple[float, float]:
    """Initial (logit_scale, logit_bias): SigLIP (log 10, -log N) for N pins per batch (the paper's -10
    is -log of its 32k batch: a positive is 1 pair in N), -10 when N is not given; InfoNCE
    (log 1/0.07, 0) as in CLIP."""
    if mode == "siglip":
        return math.log(10.0), -math.log(batch_size) if batch_size and batch_size > 1 else -10.0
    if mode == "infonce":
        return math.log(1 / 0.07), 0.0
    raise ValueError(f"unknown contrastive mode {mode!r}; expected one of {MODES}")


def image_text_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    field_mask: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    field_weights: torch.Tensor | None = None,
    mode: ContrastiveMode = "siglip",
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """{"image_text": loss} for image embeddings (B, D) against text fields (B, F, D)."""
    return multi_positive_contrastive(
        img, txt, field_mask, logit_scale, logit_bias, field_weights, mode, chunk_size, name="image_text"
    )


def multi_positive_contrastive(
    query: torch.Tensor,
    keys: torch.Tensor,
    key_mask: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    field_weights: torch.Tensor | None = None,
    mode: ContrastiveMode = "siglip",
    chunk_size: int | None = None,
    name: str = "image_text",
    ignore: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """{name: loss} for queries (B, D) against the present fields of keys (B, F, D); see module doc."""
    key_mask = key_mask.bool()
    weights = _check_inputs(query, keys, key_mask, field_weights, mode)
    rank, world = rank_and_world()
    batch, fields, dim = keys.shape
    keys = keys.masked_fill(~key_mask[..., None], 0.0)  # missing fields: no value, zero gradient

    all_query = all_gather_with_grad(query)  # (N, D), N = world*B
    all_keys = all_gather_with_grad(keys.reshape(batch, fields * dim)).reshape(-1, fields, dim)  # (N, F, D)
    all_mask = all_gather_no_grad(key_mask)  # (N, F)
    all_weights = all_mask * weights  # (N, F) weight of every present field
    row_ids = rank * batch + torch.arange(batch, device=query.device)  # (B,) global index of local pins
    scale = logit_scale.exp()
    n = all_keys.shape[0]
    if ignore is None:
        ignore = torch.zeros(n, n, dtype=torch.bool, device=query.device)
    if tuple(ignore.shape) != (n, n):
        raise ValueError(f"ignore {tuple(ignore.shape)} should be (N, N) = {(n, n)} over the global batch")
    ignore = ignore.bool() & ~torch.eye(n, dtype=torch.bool, device=query.device)  # (N, N) never the positive

    if mode == "siglip":
        bias = logit_bias if logit_bias is not None else torch.zeros((), device=query.device)
        pin_share = all_weights / all_weights.sum(-1, keepdim=True).clamp_min(1e-12)  # (N, F) sums to 1

        def siglip_rows(lo: int, hi: int) -> torch.Tensor:
            ids = row_ids[lo:hi]
            share = pin_share[None] * ~ignore[ids][..., None]  # (R, N, F): ignored pins get no term
            return _siglip_rows(query[lo:hi], ids, all_keys, share, scale, bias)

        return {name: _sum_over_row_chunks(siglip_rows, batch, chunk_size) / batch}

    def query_rows(lo: int, hi: int) -> torch.Tensor:
        ids = row_ids[lo:hi]
        return _infonce_query_rows(query[lo:hi], ids, all_keys, all_mask, all_weights, scale, ignore[ids])

    def key_rows(lo: int, hi: int) -> torch.Tensor:
        ids = row_ids[lo:hi]
        return _infonce_key_rows(keys[lo:hi], ids, all_query, all_weights[ids], scale, ignore[ids])

    num_valid = (all_weights.sum(-1) > 0).sum().clamp_min(1) / world  # pins with a positive, per rank
    query_to_key = _sum_over_row_chunks(query_rows, batch, chunk_size)
    key_to_query = _sum_over_row_chunks(key_rows, batch, chunk_size)
    return {name: (query_to_key + key_to_query) / (2 * num_valid)}


def _siglip_rows(
    query: torch.Tensor,
    ids: torch.Tensor,
    all_keys: torch.Tensor,
    pin_share: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    """Sum of the sigmoid terms of queries (R, D) with global ids (R,) against all keys (N, F, D);
    pin_share (N, F) or (R, N, F) weighs each field term (0 = no term)."""
    logits = scale * torch.einsum("rd,nfd->rnf", query, all_keys) + bias  # (R, N, F)
    is_positive = ids[:, None] == torch.arange(all_keys.shape[0], device=ids.device)[None, :]  # (R, N)
    labels = is_positive.to(logits.dtype) * 2 - 1  # (R, N) +1 / -1
    nll = -F.logsigmoid(labels[..., None] * logits)  # (R, N, F)
    return (nll * pin_share).sum()


def _infonce_query_rows(
    query: torch.Tensor,
    ids: torch.Tensor,
    all_keys: torch.Tensor,
    all_mask: torch.Tensor,
    all_weights: torch.Tensor,
    scale: torch.Tensor,
    ignore: torch.Tensor,
) -> torch.Tensor:
    """Query -> key InfoNCE of queries (R, D) over every present field of all keys (N, F, D);
    ignore (R, N): pins that are not candidates."""
    logits = scale * torch.einsum("rd,nfd->rnf", query, all_keys)  # (R, N, F)
    logits = logits.masked_fill(~all_mask[None] | ignore[..., None], torch.finfo(logits.dtype).min)
    log_prob = logits.flatten(1).log_softmax(-1).view_as(logits)  # (R, N, F) over all (pin, field)
    positive_log_prob = log_prob[torch.arange(len(ids), device=ids.device), ids]  # (R, F)
    return _weighted_positive_nll(positive_log_prob, all_weights[ids])


def _infonce_key_rows(
    keys: torch.Tensor,
    ids: torch.Tensor,
    all_query: torch.Tensor,
    weights: torch.Tensor,
    scale: torch.Tensor,
    ignore: torch.Tensor,
) -> torch.Tensor:
    """Key -> query InfoNCE of local fields (R, F, D) over all queries (N, D); positive = own pin;
    ignore (R, N): queries that are not candidates (the relation is symmetric)."""
    logits = scale * torch.einsum("rfd,nd->rfn", keys, all_query)  # (R, F, N)
    logits = logits.masked_fill(ignore[:, None, :], torch.finfo(logits.dtype).min)
    log_prob = logits.log_softmax(-1)  # (R, F, N)
    positive_log_prob = log_prob.gather(2, ids[:, None, None].expand(-1, keys.shape[1], 1))[..., 0]  # (R, F)
    return _weighted_positive_nll(positive_log_prob, weights)


def _weighted_positive_nll(positive_log_prob: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum over rows of the weighted mean of -log p over each row's positives (R, F); empty rows give 0."""
    present = weights > 0
    weighted = torch.where(present, positive_log_prob, torch.zeros_like(positive_log_prob)) * weights
    return (-weighted.sum(-1) / weights.sum(-1).clamp_min(1e-12)).sum()


def _sum_over_row_chunks(
    row_loss: Callable[[int, int], torch.Tensor], num_rows: int, chunk_size: int | None
) -> torch.Tensor:
    """row_loss(0, num_rows), or the sum over chunks of rows, each recomputed in the backward pass."""
    if chunk_size is None or chunk_size >= num_rows:
        return row_loss(0, num_rows)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    total = None
    for lo in range(0, num_rows, chunk_size):
        hi = min(lo + chunk_size, num_rows)
        part = (
            checkpoint(row_loss, lo, hi, use_reentrant=False) if torch.is_grad_enabled() else row_loss(lo, hi)
        )
        total = part if total is None else total + part
    return total


def _check_inputs(
    query: torch.Tensor,
    keys: torch.Tensor,
    key_mask: torch.Tensor,
    field_weights: torch.Tensor | None,
    mode: str,
) -> torch.Tensor:
    """Raise ValueError on mismatched shapes or an unknown mode; return the (F,) field weights."""
    if mode not in MODES:
        raise ValueError(f"unknown contrastive mode {mode!r}; expected one of {MODES}")
    if query.dim() != 2 or keys.dim() != 3:
        raise ValueError(
            f"expected query (B, D) and keys (B, F, D), got {tuple(query.shape)} and {tuple(keys.shape)}"
        )
    batch, fields, dim = keys.shape
    if query.shape != (batch, dim):
        raise ValueError(f"query {tuple(query.shape)} does not match keys {tuple(keys.shape)}")
    if key_mask.shape != (batch, fields):
        raise ValueError(f"key_mask {tuple(key_mask.shape)} should be {(batch, fields)}")
    if field_weights is None:
        return torch.ones(fields, dtype=keys.dtype, device=keys.device)
    if field_weights.shape != (fields,) or bool((field_weights < 0).any()):
        raise ValueError(f"field_weights must be {fields} non-negative numbers, got {field_weights.tolist()}")
    return field_weights.to(keys.dtype)
