"""Process entry points for the gloo tests (module level, so torch.multiprocessing can spawn)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(fn, world: int, *args) -> None:
    """Run ``fn(rank, world, port, *args)`` in ``world`` processes joined by torchrun-style env."""
    mp.spawn(fn, args=(world, free_port(), *args), nprocs=world, join=True)


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)


def train_worker(rank: int, world: int, port: int, config_yaml: str) -> None:
    """One torchrun-like rank of ``realsynth train``."""
    from realsynth.config import load_config
    from realsynth.training.train import train
    from realsynth.utils.distributed import shutdown_distributed

    _join(rank, world, port)
    try:
        train(load_config(None, base_yaml=config_yaml))
    finally:
        shutdown_distributed()


def case_worker(rank: int, world: int, port: int, case: str, config_yaml: str, out: str) -> None:
    """Run ``ddp_cases.<case>(config_yaml, rank, world)`` in a process group; rank 0 saves it."""
    import ddp_cases

    from realsynth.utils.distributed import barrier, init_distributed, shutdown_distributed

    _join(rank, world, port)
    init_distributed(torch.device("cpu"))
    try:
        result = getattr(ddp_cases, case)(config_yaml, rank, world)
        if rank == 0:
            torch.save(result, Path(out))
        # No rank tears the group down while another still uses it (gloo aborts then).
        barrier()
    finally:
        shutdown_distributed()
