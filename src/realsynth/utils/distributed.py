"""Thin helpers over ``torch.distributed`` that degrade to single-process behaviour.

The data, modeling and engine layers call these instead of ``torch.distributed`` directly so
that the same code runs unchanged without a process group (tests, CPU runs, notebooks). Joining
and leaving a process group is the engine's (``realsynth.engine.launch``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_dist_avail_and_initialized() -> bool:
    """Return True when ``torch.distributed`` is compiled in and a process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group, 1 without a process group."""
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    """Rank of this process in the default group, 0 without a process group."""
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place and return it (a no-op for a single process).

    Args:
        tensor: any-shape tensor on the device of the process group's backend.

    Returns:
        The same tensor object, now holding the element-wise sum over ranks.
    """
    if is_dist_avail_and_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_ranks_agree(ok: bool, device: torch.device | str = "cpu") -> bool:
    """True when ``ok`` holds on every rank (one all-reduce; ``ok`` itself without a group)."""
    if not is_dist_avail_and_initialized():
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=device)
    return all_reduce_sum(flag).item() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_dist_avail_and_initialized():
        dist.barrier()
