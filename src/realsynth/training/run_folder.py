"""The run folder is the user's data: one run at a time, never replaced by accident, checkpoints
kept in rotation.

Layout of ``OUTPUT_DIR``: ``config.yaml``, ``metrics.jsonl``, ``eval.json``, the plots,
``checkpoints/step_XXXXXXXX.pt`` (the last ``keep`` step checkpoints), ``checkpoints/last.pt``
(the newest of them, a hard link where the filesystem allows, else a copy), ``checkpoints/best.pt``
(the best validation score so far) and ``.lock``.

The lock is an OS file lock (``flock``) on ``.lock``, held by rank 0 for the whole run: a second
process into the same folder fails at once, naming the process that holds it, and a lock left by
a killed process dies with it (the file stays; the lock does not).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from realsynth.utils.atomic import atomic_write

LOCK_NAME = ".lock"
CHECKPOINT_DIR = "checkpoints"
#: What a run writes into its folder; ``--overwrite`` removes exactly these (and ``eval_*``).
RUN_OUTPUTS = (
    "config.yaml",
    "metrics.jsonl",
    "eval.json",
    "eval_records.npz",
    "loss_per_source.png",
    "recall.png",
    "skipped_samples.json",
    CHECKPOINT_DIR,
    "tensorboard",
)
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class RunFolderError(ValueError):
    """The run folder cannot be used as asked; the message says what to do instead."""


class RunFolder:
    """One run's folder: its lock, its outputs and its checkpoint files.

    Args:
        path: the folder (``OUTPUT_DIR``).
        keep: step checkpoints kept (the newest ones), at least 1.
    """

    def __init__(self, path: str | Path, *, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep (SOLVER.KEEP_CHECKPOINTS) must be >= 1, got {keep}")
        self.path = Path(path)
        self.keep = int(keep)
        self._lock_fd: int | None = None

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    def holds_run(self) -> bool:
        """Whether an earlier run wrote here (its config or a checkpoint)."""
        return (
            (self.path / "config.yaml").exists()
            or bool(self.step_checkpoints())
            or self.last.exists()
        )

    def lock(self) -> None:
        """Take the folder's lock (creating the folder).

        Raises:
            RunFolderError: another process holds it (names the process).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_lock(fd):
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "unknown process"
            os.close(fd)
            raise RunFolderError(
                f"{self.path} is in use by another run ({holder}); wait for it to end or "
                "choose another OUTPUT_DIR"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()}: {' '.join(sys.argv) or 'python'}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the lock (the ``.lock`` file stays; a new run locks it again)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases flock and msvcrt locks
            self._lock_fd = None

    def prepare(self, *, resume: bool, overwrite: bool, command: str) -> None:
        """Refuse to start over an existing run unless told what to do with it.

        Args:
            resume: the run continues what is there.
            overwrite: remove the earlier run's outputs first (only what :data:`RUN_OUTPUTS`
                names, and ``eval_*.json`` / ``eval_*.npz``; anything else in the folder stays).
            command: how the user started this run, for the message.

        Raises:
            RunFolderError: the folder holds a run and neither flag is given, or both are.
        """
        if resume and overwrite:
            raise RunFolderError("--resume and --overwrite exclude each other; choose one")
        if resume or not self.holds_run():
            return
        if not overwrite:
            newest = self.step_checkpoints()
            what = f"checkpoints up to step {newest[0][0]}" if newest else "a config.yaml"
            raise RunFolderError(
                f"{self.path} already holds a run ({what}); continue it with "
                f"`{command} --resume {self.path}` or replace it with `--overwrite`"
            )
        for name in RUN_OUTPUTS:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        for extra in [*self.path.glob("eval_*.json"), *self.path.glob("eval_*.npz")]:
            extra.unlink()

    def step_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every step checkpoint, newest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [
            (int(m.group(1)), p)
            for p in self.checkpoints.iterdir()
            if (m := _STEP_FILE.match(p.name))
        ]
        return sorted(found, reverse=True)

    def save(self, step: int, write: Callable[[Any], None]) -> Path:
        """Write the checkpoint of ``step`` atomically, point ``last.pt`` at it, drop old ones.

        Args:
            step: the last complete optimizer step the checkpoint holds.
            write: writes the checkpoint into a binary file object.

        Returns:
            The step checkpoint's path.
        """
        path = atomic_write(self.checkpoints / f"step_{step:08d}.pt", write)
        link_or_copy(path, self.last)
        for _, old in self.step_checkpoints()[self.keep :]:
            old.unlink(missing_ok=True)
        return path

    def save_best(self, step: int, write: Callable[[Any], None]) -> Path:
        """``best.pt``: the step checkpoint of ``step`` when it exists, else written anew."""
        step_file = self.checkpoints / f"step_{step:08d}.pt"
        if step_file.exists():
            return link_or_copy(step_file, self.best)
        return atomic_write(self.best, write)

    def resume_candidates(self) -> list[Path]:
        """Checkpoints to resume from, best first: ``last.pt``, step files newest first, best."""
        candidates = [self.last, *(p for _, p in self.step_checkpoints()), self.best]
        return [p for p in dict.fromkeys(candidates) if p.exists()]


def link_or_copy(source: Path, target: Path) -> Path:
    """Make ``target`` hold ``source``'s bytes, atomically: a hard link, or a copy where links
    are not supported."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return target


def _try_lock(fd: int) -> bool:
    """Non-blocking exclusive lock on ``fd``: True when taken."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
