"""Gathering embeddings across `torch.distributed` ranks for global contrastive negatives.

A single process is the distributed case with world size 1: without an initialized process group
(or with one rank) every function here returns its input, and the losses run the same code.
Every rank must pass tensors of the same shape.

Gradients: `all_gather_with_grad` sends back to each rank the sum, over all ranks, of the
gradient with respect to its shard (one reduce-scatter). When every rank backpropagates its own
loss and DDP averages the parameter gradients, the result is the gradient of the mean of the rank
losses. torch.distributed.nn's all_gather is not used: with gloo it returns wrong gradients when
the incoming gradient is not contiguous (seen with torch 2.13).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(world*B, ...) the shards of every rank in rank order; gradients flow back to each shard."""
    _, world = rank_and_world()
    if world == 1:
        return x
    return _AllGatherWithGrad.apply(x)


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate the shards of all ranks; backward: each shard gets its summed gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        _, world = rank_and_world()
        x = x.contiguous()
        shards = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(shards, x)
        ctx.world = world
        return torch.cat(shards, dim=0)  # (world*B, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()  # (world*B, ...)
        local = grad.new_empty((grad.shape[0] // ctx.world, *grad.shape[1:]))  # (B, ...)
        dist.reduce_scatter_tensor(local, grad)
        return local


def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """(world*B, ...) like `all_gather_with_grad` for tensors that need no gradient (masks, ids)."""
    _, world = rank_and_world()
    if world == 1:
        return x
    wire = x.to(torch.uint8) if x.dtype == torch.bool else x  # gloo has no bool collectives
    shards = [torch.empty_like(wire) for _ in range(world)]
    dist.all_gather(shards, wire.contiguous())
    gathered = torch.cat(shards, dim=0)  # (world*B, ...)
    return gathered.bool() if x.dtype == torch.bool else gathered
