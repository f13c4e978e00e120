"""Training checkpoints: what one holds, how it is written and rotated, and reading it back.

A checkpoint holds the model, optimizer, scheduler, sampler position, where the run stands and
every RNG state: with all of these restored, a resumed run reproduces the uninterrupted one step
for step. :class:`CheckpointContents` names its keys; :data:`CHECKPOINT_VERSION` is the format.

Layout of ``<run>/checkpoints/`` (:class:`CheckpointFiles`): ``step_XXXXXXXX.pt`` (the last
``keep`` step checkpoints, each written atomically), ``last.pt`` (the newest of them, a hard link
where the filesystem allows, else a copy) and ``best.pt`` (the best validation score so far). A
resume reads the newest readable one (:func:`realsynth.training.resume.restore_checkpoint`) and
says which it chose and why.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypedDict

import numpy as np
import torch
from torch import nn

from realsynth.training.run_state import RunState
from realsynth.utils.atomic import atomic_write

CHECKPOINT_VERSION = 1
#: The keys a resumed run needs.
RESUME_KEYS = ("model", "optimizer", "scheduler", "run_state", "sampler", "rng")
#: The keys that rebuild a finished run's model (``realsynth eval``, ``data filter``).
MODEL_KEYS = ("model", "config")

#: The run folder's checkpoint folder and its two named files (step files: ``step_%08d.pt``).
CHECKPOINT_DIR = "checkpoints"
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class _CheckpointCore(TypedDict):
    version: int  # CHECKPOINT_VERSION
    model: dict[str, Any]  # the model's state_dict (unwrapped from DistributedDataParallel)
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    sampler: dict[str, Any]  # the sampler's state at the run's position (RunState.sampler_state)
    run_state: dict[str, Any]  # RunState.to_dict()
    rng: dict[str, Any]  # rng_states() of the last step boundary
    config: str  # the run's config as YAML


class CheckpointContents(_CheckpointCore, total=False):
    """What a checkpoint file holds (a plain dict, written with ``torch.save``)."""

    adaptive: dict[str, Any]  # AdaptiveMixer.state_dict(), only with adaptive mixing


@dataclass
class TrainingObjects:
    """The live objects a checkpoint saves and restores."""

    model: nn.Module
    optimizer: Any
    scheduler: Any
    sampler: Any  # the train loader's batch sampler
    adaptive: Any = None  # the AdaptiveMixer, or None


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


def checkpoint_contents(
    state: RunState, objects: TrainingObjects, config_yaml: str, rng: dict[str, Any]
) -> CheckpointContents:
    """Everything a resumed run needs, at the position ``state`` (aligned with the sampler).

    Args:
        state: where the run stands.
        objects: the model (possibly wrapped in DistributedDataParallel), optimizer, scheduler,
            sampler and adaptive mixer.
        config_yaml: the run's config.
        rng: the RNG states to resume with (those of the last step boundary).
    """
    extra = {"adaptive": objects.adaptive.state_dict()} if objects.adaptive is not None else {}
    model = getattr(objects.model, "module", objects.model)
    state.align_with(objects.sampler)
    return CheckpointContents(
        **extra,  # type: ignore[typeddict-item]
        version=CHECKPOINT_VERSION,
        model=model.state_dict(),
        optimizer=objects.optimizer.state_dict(),
        scheduler=objects.scheduler.state_dict(),
        sampler=state.sampler_state(objects.sampler),
        run_state=state.to_dict(),
        rng=rng,
        config=config_yaml,
    )


class CheckpointFiles:
    """The ``checkpoints/`` folder of one run.

    Args:
        run_dir: the run folder (``OUTPUT_DIR``).
        keep: step checkpoints kept (the newest ones), at least 1.
    """

    def __init__(self, run_dir: str | Path, *, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep (SOLVER.KEEP_CHECKPOINTS) must be >= 1, got {keep}")
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / CHECKPOINT_DIR
        self.keep = int(keep)

    @property
    def last(self) -> Path:
        """``last.pt``: the newest step checkpoint."""
        return self.path / LAST_NAME

    @property
    def best(self) -> Path:
        """``best.pt``: the checkpoint with the best selection score."""
        return self.path / BEST_NAME

    def step_path(self, step: int) -> Path:
        """The step checkpoint of ``step`` (whether it exists or not)."""
        return self.path / f"step_{step:08d}.pt"

    def step_files(self) -> list[tuple[int, Path]]:
        """(step, path) of every step checkpoint, newest first."""
        if not self.path.is_dir():
            return []
        found = [
            (int(m.group(1)), p) for p in self.path.iterdir() if (m := _STEP_FILE.match(p.name))
        ]
        return sorted(found, reverse=True)

    def write(self, step: int, contents: Mapping[str, Any]) -> Path:
        """Write the checkpoint of ``step`` atomically, point ``last.pt`` at it, drop old ones.

        Older checkpoints are dropped only once the new one and ``last.pt`` are in place.

        Args:
            step: the last complete optimizer step the checkpoint holds.
            contents: what the checkpoint holds (``torch.save``\\ d).

        Returns:
            The step checkpoint's path.

        Raises:
            CheckpointWriteError: it could not be written (a full disk); the folder holds what
                it held before (no temporary file, no step file newer than ``last.pt``).
        """
        path = _write_or_explain(self.step_path(step), _writer(contents))
        try:
            link_or_copy(path, self.last)
        except Exception as exc:
            path.unlink(missing_ok=True)  # resume reads last.pt first: it must be the newest
            raise _explained(self.last, exc) from exc
        for _, old in self.step_files()[self.keep :]:
            old.unlink(missing_ok=True)
        return path

    def write_best(self, step: int, contents: Mapping[str, Any]) -> Path:
        """``best.pt``: the step checkpoint of ``step`` when it exists, else ``contents`` written
        anew."""
        step_file = self.step_path(step)
        try:
            if step_file.exists():
                return link_or_copy(step_file, self.best)
        except Exception as exc:
            raise _explained(self.best, exc) from exc
        return _write_or_explain(self.best, _writer(contents))

    def candidates(self) -> list[Path]:
        """Checkpoints to resume from, best first: ``last.pt``, step files newest first, best."""
        found = [self.last, *(p for _, p in self.step_files()), self.best]
        return [p for p in dict.fromkeys(found) if p.exists()]


def link_or_copy(source: Path, target: Path) -> Path:
    """Make ``target`` hold ``source``'s bytes, atomically: a hard link, or a copy where links
    are not supported."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not keep a half copy
        raise
    return target


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the file it was to replace is unchanged.

    Attributes:
        path: the checkpoint being written.
        errno: the operating system's error number (``errno.ENOSPC``: the disk is full), or None.
    """

    def __init__(self, path: Path, errno_: int | None, why: str) -> None:
        super().__init__(errno_, why, str(path))
        self.path = Path(path)

    def __str__(self) -> str:
        return f"cannot write the checkpoint {self.path}: {self.strerror}"

    @property
    def disk_full(self) -> bool:
        """Whether the disk (or the user's quota on it) is full."""
        return self.errno in (errno.ENOSPC, errno.EDQUOT)


def _write_or_explain(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """:func:`atomic_write`, its failures to store the bytes raised as CheckpointWriteError."""
    try:
        return atomic_write(path, write)
    except Exception as exc:
        raise _explained(path, exc) from exc


def _explained(path: Path, exc: Exception) -> Exception:
    """``exc`` as a CheckpointWriteError when the bytes could not be stored (an OSError, or
    torch's zip writer failing on one: ``inline_container.cc ... unexpected pos``), else ``exc``
    (a bug: its own traceback)."""
    found = next((e for e in _chain(exc) if isinstance(e, OSError)), None)
    if found is None and "inline_container" not in str(exc):
        return exc
    if found is None:
        return CheckpointWriteError(path, None, f"the write failed ({_first_line(exc)})")
    code = found.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
    else:
        why = (found.strerror or _first_line(found)).lower()
    return CheckpointWriteError(path, code, why)


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during (torch keeps the OSError of a
    failed write as the context of its own RuntimeError)."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _writer(contents: Mapping[str, Any]) -> Callable[[IO[bytes]], None]:
    """A ``write(handle)`` function that ``torch.save``\\ s ``contents`` (for atomic writes)."""
    return lambda handle: torch.save(contents, handle)


def load_checkpoint(path: str | Path, *, required: tuple[str, ...] = ("model",)) -> dict[str, Any]:
    """Load a checkpoint onto the CPU.

    Args:
        path: a ``.pt`` file written by the trainer, or a run folder (then
            ``checkpoints/last.pt`` inside it).
        required: keys the caller needs; a missing one is a clear error.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        UnusableCheckpoint (a ValueError): the file is not a realsynth checkpoint or lacks a
            required key.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_DIR / LAST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        # RNG states hold numpy arrays and tuples: the file is our own, so full unpickling is safe.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UnusableCheckpoint(
            path, f"not a readable checkpoint ({exc})", f"is unreadable ({_first_line(exc)})"
        ) from None
    if not isinstance(state, dict) or "version" not in state:
        problem = "not a realsynth checkpoint (no 'version' key)"
        raise UnusableCheckpoint(path, problem, f"is {problem}")
    missing = [key for key in required if key not in state]
    if missing:
        raise UnusableCheckpoint(path, f"checkpoint lacks {missing}", f"lacks {missing}")
    return state


class UnusableCheckpoint(ValueError):
    """A file that is not a checkpoint the caller can use.

    Attributes:
        path: the file.
        problem: what is wrong with it, as a predicate of its name (``is unreadable (...)``).
    """

    def __init__(self, path: Path, message: str, problem: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path, self.problem = path, problem


def load_model_weights(model: nn.Module, weights: Mapping[str, Any], path: Path, fix: str) -> None:
    """``model.load_state_dict(weights)``, or one line that says what does not fit.

    Args:
        path: the checkpoint the weights come from (named in the message).
        fix: what the user should do instead (the message's end).

    Raises:
        ValueError: tensors of other shapes, missing or unexpected: the first ones by name with
            the checkpoint's and the model's shape, and how many in all.
    """
    live = model.state_dict()
    shapes = [
        (k, list(v.shape), list(live[k].shape))
        for k, v in weights.items()
        if k in live and tuple(v.shape) != tuple(live[k].shape)
    ]
    missing = [k for k in live if k not in weights]
    unexpected = [k for k in weights if k not in live]
    if not (shapes or missing or unexpected):
        model.load_state_dict(weights)
        return
    parts = []
    if shapes:
        first = ", ".join(f"{k} (checkpoint {a}, model {b})" for k, a, b in shapes[:3])
        parts.append(f"{len(shapes)} of {len(live)} tensors differ in shape, first {first}")
    for names, what in (
        (missing, "the model has and the checkpoint lacks"),
        (unexpected, "the checkpoint has and the model lacks"),
    ):
        if names:
            parts.append(f"{len(names)} tensors {what} (first {', '.join(names[:3])})")
    raise ValueError(f"{path} does not fit the model: {'; '.join(parts)}; {fix}")
