"""The trials of a sweep that many processes share: new points in every process, one folder per
trial, and trials whose process died failed and tried again from their checkpoint.

- **Draws.** :class:`TrialSeededSampler` makes its sampler afresh for every trial, seeded by
  ``(SEED, trial number)``. Trial numbers are unique within a study, so another ``--jobs``
  worker, another machine or the same command run again after a kill never draws a point that
  an earlier trial drew from the same seed, and a study replayed draws the same points.
- **Folders.** A trial trains in ``OUTPUT_DIR/trials/<number>``; a retry of a trial (after
  Ctrl-C or a dead worker) takes over its folder and resumes from its checkpoint. While a trial
  runs, its process holds ``<folder>.lock``, an OS lock the system releases when the process dies.
- **Dead workers.** A database storage records Optuna's heartbeat; a trial whose heartbeat
  stopped is failed and queued again by Optuna. A journal file has no heartbeat: a running trial
  whose lock is free belongs to a dead process, and :func:`fail_dead_trials` fails it and queues
  it again.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from realsynth.utils import file_lock

JOURNAL = "study.journal"
#: Retries of a trial whose worker died before Optuna gives up on it.
MAX_RETRIES = 3


class StorageError(ValueError):
    """The study storage cannot be opened (the message names it, password masked)."""


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """An Optuna sampler made afresh for every trial by ``make(seed)``, with a seed derived
    from ``(seed, trial number)``.

    Args:
        make: builds the sampler that draws one trial's parameters from a seed.
        seed: the sweep's seed.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, int(seed)
        self._inner = make(self._seed)

    def seed_for(self, number: int) -> int:
        """The seed of trial ``number``'s sampler."""
        return int(np.random.SeedSequence([self._seed, number]).generate_state(1)[0] % 2**31)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._make(self.seed_for(trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, space: dict) -> dict:
        return self._inner.sample_relative(study, trial, space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: Any
    ) -> Any:
        return self._inner.sample_independent(study, trial, name, distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def is_database(storage: str | None) -> bool:
    """Whether ``--storage`` names a database (an URL) rather than a journal file."""
    return bool(storage) and "://" in str(storage)


def mask_password(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def open_storage(out: Path, storage: str | None, heartbeat: float) -> Any:
    """The Optuna storage: a database URL (with heartbeat ``heartbeat`` seconds and retries of
    trials whose heartbeat stopped), else a journal file (default ``out/study.journal``).

    Raises:
        StorageError: the database cannot be reached, refuses us, or its driver is missing.
    """
    if not is_database(storage):
        path = Path(storage) if storage else out / JOURNAL
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
        except OSError as exc:
            raise StorageError(f"--storage {path}: {exc.strerror or exc}") from None
        return optuna.storages.JournalStorage(backend)
    for attempt in range(3):
        try:
            return _database(str(storage), heartbeat)
        except Exception as exc:  # the driver's and SQLAlchemy's errors: one line for the user
            # Workers that create the tables of a new database at once collide; the loser's
            # second try finds them.
            if "duplicate key" in str(exc) and attempt < 2:
                time.sleep(0.5 + attempt)
                continue
            raise StorageError(
                f"--storage {mask_password(str(storage))}: cannot open the study: {_cause(exc)}"
            ) from None
    raise AssertionError("unreachable")


def _database(url: str, heartbeat: float) -> optuna.storages.RDBStorage:
    """An RDB storage with Optuna's heartbeat and retries of trials whose heartbeat stopped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=max(1, int(heartbeat)),
            grace_period=max(2, int(3 * heartbeat)),
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_RETRIES
            ),
        )


def _cause(exc: BaseException) -> str:
    """The first line of what went wrong, from the driver when SQLAlchemy wraps it."""
    missing = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__
    if isinstance(missing, ModuleNotFoundError):
        return (
            f"the database driver {missing.name!r} is not installed "
            "(pip install 'realsynth[postgres]' for PostgreSQL)"
        )
    inner = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return lines[0] if lines else type(inner).__name__


def trial_folder(out: Path, trial: Any) -> Path:
    """The run folder of ``trial``: its own (``trials/<number>``), or the folder of the trial it
    retries (``resume_folder``; ``folder`` in a copy Optuna made after a stopped heartbeat)."""
    attrs = trial.user_attrs
    own = out / "trials" / f"{trial.number:04d}"
    return Path(attrs.get("resume_folder") or attrs.get("folder") or own)


def lock_path(folder: Path) -> Path:
    """The lock a trial's process holds while it runs."""
    return folder.with_name(folder.name + ".lock")


def retry(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Queue ``trial``'s parameters again; the retry resumes the trial's folder."""
    # Not "folder": that one says the trial's process holds the folder's lock.
    attrs = {"resume_folder": str(trial.user_attrs["folder"]), "retries": trial.number}
    study.enqueue_trial(trial.params, user_attrs={**attrs, reason: True}, skip_if_exists=False)


def fail_dead_trials(study: optuna.Study, database: bool) -> list[int]:
    """Fail and queue again every running trial whose process died.

    A database storage knows from the heartbeat (Optuna fails the trial and queues its
    retry); with a journal file:

    a running trial's process holds its folder's lock; a free lock means the process is gone.
    The check holds that lock while it fails and queues the trial, so two processes never both
    retry it. Returns the numbers of the trials failed (journal storages only).
    """
    if database:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return []
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        folder = trial.user_attrs.get("folder")
        if not folder:
            continue  # its process has not reached its folder yet
        fd = file_lock.acquire(lock_path(Path(folder)))
        if fd is None:
            continue  # alive
        try:
            current = study._storage.get_trial(trial._trial_id)
            if current.state == TrialState.RUNNING:
                study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
                retry(study, current, "after_dead_worker")
                failed.append(trial.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # it finished or another process failed it meanwhile
        finally:
            file_lock.release(fd)
    return failed
