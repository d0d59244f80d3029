"""Gathering tensors across data-parallel ranks for losses that need the global batch.

Every helper is a no-op when ``torch.distributed`` is not initialised or the world has one rank, so a
loss calls them unconditionally. All ranks must pass tensors of the same shape (``all_gather`` needs it),
i.e. the same per-rank batch size: use ``drop_last=True`` on the training loader.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist

ProcessGroup = Any  # torch.distributed.ProcessGroup; None means the default (world) group


def dist_info(group: Optional[ProcessGroup] = None) -> tuple[int, int]:
    """``(rank, world_size)`` within ``group``; ``(0, 1)`` when not running distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _gather_list(x: torch.Tensor, world_size: int, group: Optional[ProcessGroup]) -> list[torch.Tensor]:
    x = x.contiguous()
    out = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(out, x, group=group)
    return out


class _AllGatherWithGrad(torch.autograd.Function):
    """``all_gather`` along dim 0 whose backward routes every rank's gradient back to its owner.

    Forward: ``(B, ...)`` on each rank -> ``(world_size * B, ...)``, rank r's rows at ``[r*B:(r+1)*B]``.
    Backward: rank r's input influences the loss of *every* rank, so its gradient is the sum over ranks of
    the gradients w.r.t. its slice: all_reduce(SUM) the full incoming gradient, keep this rank's slice.
    Together with DDP's averaging of parameter gradients this yields the gradient of the mean of the
    per-rank losses.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Optional[ProcessGroup]) -> torch.Tensor:
        rank, world_size = dist_info(group)
        ctx.rank, ctx.batch, ctx.group = rank, x.shape[0], group
        return torch.cat(_gather_list(x, world_size, group), dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()  # all_reduce works in place; the incoming buffer is not ours
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.batch
        return grad[start:start + ctx.batch], None


def all_gather_with_grad(x: torch.Tensor, group: Optional[ProcessGroup] = None) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, differentiable w.r.t. every rank's ``x``."""
    if dist_info(group)[1] == 1:
        return x
    return _AllGatherWithGrad.apply(x, group)


def all_gather_no_grad(x: torch.Tensor, group: Optional[ProcessGroup] = None) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0; only this rank's own slice carries gradient.

    The other ranks' tensors arrive detached and this rank's ``x`` is put back in its slot, so gradient
    flows into the local features from this rank's loss only (open_clip's ``gather_with_grad=False``).
    """
    rank, world_size = dist_info(group)
    if world_size == 1:
        return x
    with torch.no_grad():
        parts = _gather_list(x, world_size, group)
    parts[rank] = x
    return torch.cat(parts, dim=0)
