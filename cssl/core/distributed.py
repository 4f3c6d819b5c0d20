"""Rank and world helpers, gathers with and without gradient, and batch shuffling for shuffle BN.

Every function falls back to the single-process case when torch.distributed is not initialised, so the
same code runs on a laptop and on a cluster.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """The global rank (never the local GPU index: positives of rank r sit at r*B on every node)."""
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients that every rank computed for this rank's slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.batch = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)  # (P*B, ...)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        # a copy: autograd may hand the same buffer to other branches of the graph, so never reduce in place
        grad = grad.clone(memory_format=torch.contiguous_format)  # (P*B, ...)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every rank's loss depends on this rank's rows
        start = rank() * ctx.batch
        return grad[start : start + ctx.batch]


def gather_with_grad(x: Tensor) -> Tensor:
    """(B, ...) on each rank -> (P*B, ...) in rank order, differentiable.

    The backward pass sums the gradients of all ranks for the local slice, so that with DDP's gradient
    averaging the parameter gradients equal those of one process holding the whole global batch.
    All ranks must pass the same B.
    """
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather(x: Tensor) -> Tensor:
    """(B, ...) on each rank -> (P*B, ...) in rank order, without gradient (queue and bank fills)."""
    if not is_distributed() or world_size() == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks (a new tensor; identity on one process)."""
    if not is_distributed() or world_size() == 1:
        return x.clone()
    out = x.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


@torch.no_grad()
def shuffle_batch(x: Tensor) -> tuple[Tensor, Tensor]:
    """Shuffle a batch across ranks for shuffle BN; returns this rank's shuffled rows and the undo index.

    The permutation of the global batch is drawn on rank 0 and broadcast; the broadcast value is what
    every rank uses. On one process the batch is permuted locally.

    Returns:
        (x_shuffled (B, ...), unshuffle_index (P*B,)) to pass to :func:`unshuffle_batch`.
    """
    b = x.shape[0]
    x_all = gather(x)  # (P*B, ...)
    perm = torch.randperm(x_all.shape[0], device=x.device)
    if is_distributed() and world_size() > 1:
        dist.broadcast(perm, src=0)
    unshuffle = torch.argsort(perm)
    start = rank() * b
    return x_all[perm[start : start + b]], unshuffle


@torch.no_grad()
def unshuffle_batch(x: Tensor, unshuffle: Tensor) -> Tensor:
    """Undo :func:`shuffle_batch` on its output rows (B, ...) -> this rank's original rows (B, ...)."""
    b = x.shape[0]
    x_all = gather(x)  # (P*B, ...)
    start = rank() * b
    return x_all[unshuffle[start : start + b]]
