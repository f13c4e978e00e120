"""What every benchmark shares: the machine description and writing its results section."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from realsynth.utils.atomic import atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """CPU model, cores, torch (and its thread count) and Python versions, in one line."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def write_result(name: str, text: str) -> Path:
    """Atomically write a benchmark's markdown section to ``benchmarks/results/<name>.md``."""
    return atomic_write_text(RESULTS_DIR / f"{name}.md", text)
