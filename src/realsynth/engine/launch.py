"""Process setup shared by every command: seeding, device choice, torchrun process groups."""

from __future__ import annotations

import os
import random
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``MODEL.DEVICE`` -> a device. ``auto`` and ``cuda`` mean this process's GPU under torchrun
    (``LOCAL_RANK``); ``auto`` falls back to the CPU.

    Raises:
        ValueError: CUDA is asked for but absent, or ``cuda:N`` is given to several processes
            (they would all share GPU N).
    """
    local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name == "auto":
        return local if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"MODEL.DEVICE={name!r} but CUDA is not available; use auto or cpu")
    if device.type == "cuda" and device.index is None:
        return local
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            f"MODEL.DEVICE={name!r} would put every process on one GPU; use auto or cuda"
        )
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
