"""The few collectives a torchrun training makes; each is a no-op (or the local value) in one process."""

from __future__ import annotations

import torch

from ..distributed import Dist


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers (ActNorm initialisation included) to every rank."""
    import torch.distributed as dist

    for t in list(module.parameters()) + list(module.buffers()):
        if t.dtype == torch.bool:  # gloo cannot broadcast bool
            tmp = t.data.to(torch.uint8)
            dist.broadcast(tmp, 0)
            t.data.copy_(tmp.bool())
        else:
            dist.broadcast(t.data, 0)


def any_rank(flag: bool, ctx: Dist, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (so that all of them stop at the same step)."""
    if not ctx.active:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def rank0_int(value: int, ctx: Dist, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank."""
    if not ctx.active:
        return value
    import torch.distributed as dist

    t = torch.tensor([float(value)], device=device)
    dist.broadcast(t, 0)
    return int(t.item())


def mean_over_ranks(t: torch.Tensor, ctx: Dist) -> torch.Tensor:
    """The mean of ``t`` over the ranks, in place."""
    if ctx.active:
        import torch.distributed as dist

        dist.all_reduce(t)
        t /= ctx.world
    return t


def gather_states(mine: dict, ctx: Dist) -> dict:
    """{name}.rank{r} for every rank's ``mine`` (a collective under DDP: every rank must call it)."""
    if not ctx.active:
        return {f"{k}.rank0": v for k, v in mine.items()}
    import torch.distributed as dist

    everyone = [None] * ctx.world
    dist.all_gather_object(everyone, mine)
    return {f"{k}.rank{r}": v for r, states in enumerate(everyone) for k, v in states.items()}


def barrier(ctx: Dist) -> None:
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel (its gradients averaged over the ranks in backward)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
