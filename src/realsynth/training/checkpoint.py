"""Training checkpoints: model, optimizer, scheduler, sampler position and every RNG state.

With all of these restored, a resumed run reproduces the uninterrupted one step for step.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_VERSION = 1


def rng_states() -> dict[str, Any]:
    """Snapshot of the python, numpy and torch (CPU and CUDA) random generators."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured (CUDA only when present on both sides)."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_checkpoint(path: str | Path, *, required: tuple[str, ...] = ("model",)) -> dict[str, Any]:
    """Load a checkpoint onto the CPU.

    Args:
        path: a ``.pt`` file written by the trainer, or a run folder (then
            ``checkpoints/last.pt`` inside it).
        required: keys the caller needs; a missing one is a clear error.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: the file is not a realsynth checkpoint or lacks a required key.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        # RNG states hold numpy arrays and tuples: the file is our own, so full unpickling is safe.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(state, dict) or "version" not in state:
        raise ValueError(f"{path}: not a realsynth checkpoint (no 'version' key)")
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing}")
    return state
