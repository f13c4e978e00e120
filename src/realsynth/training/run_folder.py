"""The run folder is the user's data: one run at a time, never replaced by accident.

Layout of ``OUTPUT_DIR``: ``config.yaml``, ``metrics.jsonl``, ``eval.json``, the plots,
``checkpoints/`` (kept in rotation by :mod:`realsynth.training.checkpoint`) and ``.lock``.

The lock is an OS file lock (``flock``) on ``.lock``, held by rank 0 for the whole run: a second
process into the same folder fails at once, naming the process that holds it, and a lock left by
a killed process dies with it (the file stays; the lock does not).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from realsynth.training.checkpoint import CHECKPOINT_DIR, CheckpointFiles
from realsynth.training.run_log import read_metrics
from realsynth.utils import file_lock
from realsynth.utils.distributed import get_rank

LOCK_NAME = ".lock"
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


class RunFolderError(ValueError):
    """The run folder cannot be used as asked; the message says what to do instead."""


class RunFolder:
    """One run's folder: its lock, its outputs and (through :attr:`checkpoint_files`) its
    checkpoints.

    Args:
        path: the folder (``OUTPUT_DIR``).
        keep: step checkpoints kept (the newest ones), at least 1.
    """

    def __init__(self, path: str | Path, *, keep: int = 2) -> None:
        self.path = Path(path)
        self.checkpoint_files = CheckpointFiles(self.path, keep=keep)
        self._lock_fd: int | None = None

    def holds_run(self) -> bool:
        """Whether an earlier run wrote here (its config or a checkpoint)."""
        return (
            (self.path / "config.yaml").exists()
            or bool(self.checkpoint_files.step_files())
            or self.checkpoint_files.last.exists()
        )

    def lock(self) -> None:
        """Take the folder's lock (creating the folder).

        Raises:
            RunFolderError: another process holds it (names the process), or the folder cannot
                be created or written (permission denied, a file in the way, a read-only disk).
        """
        fd = None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = file_lock.acquire(self.path / LOCK_NAME)
            if fd is not None:
                _check_writable(self.path)
        except OSError as exc:
            file_lock.release(fd)
            raise RunFolderError(_unusable(self.path, exc)) from None
        if fd is None:
            raise RunFolderError(
                f"{self.path} is in use by another run ({file_lock.holder(self.path / LOCK_NAME)});"
                " wait for it to end or choose another OUTPUT_DIR"
            )
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the lock (the ``.lock`` file stays; a new run locks it again)."""
        file_lock.release(self._lock_fd)
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
            newest = self.checkpoint_files.step_files()
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

    def resume_candidates(self) -> list[Path]:
        """Checkpoints to resume from, best first (see :meth:`CheckpointFiles.candidates`)."""
        return self.checkpoint_files.candidates()

    def finished_results(self, step: int, max_iter: int) -> dict[str, dict[str, float]] | None:
        """The saved results when the run, resumed at ``step``, already made its final
        evaluation at its last step (None: training or the final evaluation is still to do).

        Raises:
            ValueError: ``step`` is past ``max_iter``.
        """
        if step < max_iter:
            return None
        if step > max_iter:
            raise ValueError(
                f"--resume {self.path}: its checkpoint is at step {step}, past "
                f"SOLVER.MAX_ITER={max_iter}; raise SOLVER.MAX_ITER to continue"
            )
        records = read_metrics(self.path) if (self.path / "metrics.jsonl").exists() else []
        final = any(
            r.get("kind") == "eval" and r.get("final") and r["step"] == step for r in records
        )
        results_file = self.path / "eval.json"
        if not final or not results_file.exists():
            return None  # stopped during the final evaluation: do that now
        if get_rank() == 0:
            print(
                f"realsynth: {self.path} finished at step {step} (SOLVER.MAX_ITER={max_iter}); "
                f"raise SOLVER.MAX_ITER to continue, e.g. `realsynth train --resume {self.path} "
                f"SOLVER.MAX_ITER={2 * step}`"
            )
        return json.loads(results_file.read_text())


def _check_writable(folder: Path) -> None:
    """Create and remove a file in ``folder`` as an atomic write would (the lock file may
    already exist in a folder that no longer lets files be created).

    Raises:
        OSError: the folder does not let a file be created.
    """
    fd, name = tempfile.mkstemp(prefix=".write-test.", dir=folder)
    os.close(fd)
    os.unlink(name)


def _unusable(folder: Path, exc: OSError) -> str:
    """One line: which folder, and why a run cannot write there."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        if folder.is_dir():
            why = "permission denied: the folder is not writable"
        else:
            failed = Path(exc.filename) if exc.filename else folder
            why = f"permission denied: cannot create it ({failed.parent} is not writable)"
    elif exc.errno == errno.EROFS:
        why = "not writable: it is on a read-only file system"
    elif exc.errno in (errno.EEXIST, errno.ENOTDIR):
        chain = [*reversed(folder.parents), folder]
        blocker = next((p for p in chain if p.exists() and not p.is_dir()), folder)
        why = f"{blocker} is a file, not a folder"
    else:
        why = f"cannot write there: {exc.strerror or exc}"
    return f"OUTPUT_DIR {folder}: {why}; choose another OUTPUT_DIR"
