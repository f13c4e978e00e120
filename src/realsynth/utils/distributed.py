"""Process setup and thin helpers over ``torch.distributed`` that degrade to one process.

Every layer calls these instead of ``torch.distributed`` directly so that the same code runs
unchanged without a process group (tests, CPU runs, notebooks). The commands join and leave a
process group with :func:`init_distributed` / :func:`shutdown_distributed` (torchrun), seed with
:func:`seed_all` and pick their device with :func:`resolve_device`.
"""

from __future__ import annotations

import os
import random
from datetime import timedelta

import numpy as np
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


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """A device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``) -> a device. ``auto`` and
    ``cuda`` mean this process's GPU under torchrun (``LOCAL_RANK``); ``auto`` falls back to the
    CPU.

    Raises:
        ValueError: CUDA is asked for but absent, or ``cuda:N`` is given to several processes
            (they would all share GPU N).
    """
    local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name == "auto":
        return local if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available; use auto or cpu")
    if device.type == "cuda" and device.index is None:
        return local
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(f"device {name!r} would put every process on one GPU; use auto or cuda")
    return device


def init_distributed(device: torch.device) -> bool:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1).

    NCCL on CUDA devices, gloo on the CPU. Returns True when a process group is in use.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or dist.is_initialized():
        return dist.is_initialized()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return True


def shutdown_distributed() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
