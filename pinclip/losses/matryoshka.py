"""Matryoshka wrapper for any loss, and global affine int8 fake quantization for training.

`matryoshka_loss` (Kusupati et al. 2022, "Matryoshka Representation Learning") applies a loss to
the first d dimensions of every embedding, re-L2-normalized, for each d in `dims`, so every prefix
is a usable embedding on its own. The loss function receives the truncated embeddings as keyword
arguments (bind everything else with functools.partial) and returns a dict of named terms.

`fake_quant_global_affine` rounds embeddings the way serving stores them (README.md, int8 under "Results": one scale
s and zero-point z for all vectors, x_q = clip(round(x / s) + z), x_dq = s * (x_q - z)) with a
straight-through gradient, so a quantization-aware term sees serving precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def matryoshka_loss(
    loss_fn: Callable[..., dict[str, torch.Tensor]],
    embeddings: dict[str, torch.Tensor],
    dims: Sequence[int] = (256, 128, 64),
    weights: Sequence[float] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-prefix terms "{term}@{d}" and their weighted sums under the plain term names.

    The objective is the sum of the plain-named terms; the "@d" entries are for logging (they are
    already included in the totals). Embeddings are truncated on their last axis, so (B, D) and
    (B, F, D) both work; all-zero vectors (missing fields) stay zero.
    """
    weights = tuple(weights) if weights is not None else (1.0,) * len(dims)
    if len(weights) != len(dims) or not dims:
        raise ValueError(f"matryoshka: need one weight per dim, got dims {tuple(dims)} and weights {weights}")
    for name, x in embeddings.items():
        if max(dims) > x.shape[-1]:
            raise ValueError(
                f"matryoshka: dim {max(dims)} exceeds the {x.shape[-1]} dims of embedding {name!r}"
            )

    terms: dict[str, torch.Tensor] = {}
    totals: dict[str, torch.Tensor] = {}
    for dim, weight in zip(dims, weights):
        prefixes = {name: F.normalize(x[..., :dim], dim=-1) for name, x in embeddings.items()}
        for term, value in loss_fn(**prefixes).items():
            terms[f"{term}@{dim}"] = value
            totals[term] = weight * value if term not in totals else totals[term] + weight * value
    return {**totals, **terms}


class _GlobalAffineFakeQuant(torch.autograd.Function):
    """Forward: dequantize(quantize(x)); backward: identity where x is inside the int8 range."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
        codes = torch.round(x / scale) + zero_point
        ctx.save_for_backward((codes >= qmin) & (codes <= qmax))
        return scale * (codes.clamp(qmin, qmax) - zero_point)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        (in_range,) = ctx.saved_tensors
        return grad_output * in_range, None, None, None, None


def fake_quant_global_affine(
    x: torch.Tensor, scale: float | torch.Tensor, zero_point: int, qmin: int = -128, qmax: int = 127
) -> torch.Tensor:
    """x as serving sees it after int8 storage, with a straight-through (clipped) gradient."""
    scale = float(scale)
    if not scale > 0:
        raise ValueError(f"fake quantization needs a positive scale, got {scale}")
    if not qmin <= zero_point <= qmax:
        raise ValueError(f"zero_point {zero_point} is outside [{qmin}, {qmax}]")
    return _GlobalAffineFakeQuant.apply(x, scale, int(zero_point), qmin, qmax)
