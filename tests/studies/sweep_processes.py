"""Sweeps in separate processes for the sweep tests: as another machine, or one killed mid-trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tiny_runs import TINY

#: The tiny model and data, trials of a few steps, no confirmation runs.
SWEEP_ARGS = (*TINY, "TEST.EVAL_PERIOD=0", "SWEEP.CONFIRM_SEEDS=0")


def sweep_command(demo_root: Path, out: Path, *overrides: str, storage: str | None = None):
    """``realsynth sweep`` on the tiny demo, as a command line."""
    cmd = [sys.executable, "-m", "realsynth", "sweep", *SWEEP_ARGS]
    cmd += [f"DATASETS.DEMO.ROOT={demo_root}", f"OUTPUT_DIR={out}", *overrides]
    return cmd + (["--storage", storage, "--study", "s"] if storage else [])


def one_thread_env() -> dict[str, str]:
    """Each process one thread: two sweeps side by side on 2 cores, each with a fair share."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=one_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def kill_when(process: subprocess.Popen, ready, timeout: float = 300.0) -> None:
    """SIGKILL ``process`` (no chance to clean up) once ``ready()`` holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"the sweep ended before it was killed:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the sweep never reached the point to kill it")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def step_checkpoints(folder: Path) -> list[Path]:
    return sorted((folder / "checkpoints").glob("step_*.pt"))
