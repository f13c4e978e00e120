"""``realsynth sweep``: a compute-matched search of the mix with Optuna, on one machine or many.

Every trial is an ordinary run folder ``OUTPUT_DIR/trials/<id>`` (``id`` derived from the
trial's parameters) trained with the same budget (steps, batch, model, seed) as every other, so
trials compare like for like; it maximizes ``SWEEP.METRIC`` on ``SWEEP.SOURCE``'s validation
set. The study lives in an Optuna storage: by default a journal file
``OUTPUT_DIR/study.journal`` (no server needed); any Optuna storage URL (``sqlite:///...``,
``postgresql://...``) or a journal file on a shared filesystem lets many machines run the same
command on one study. Periodic evaluations feed Optuna's pruner (successive halving by default),
which stops bad mixes early. Ctrl-C keeps every finished trial; an interrupted trial is tried
again (and resumed from its checkpoint) when the same command runs again.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from omegaconf import DictConfig
from optuna.trial import TrialState

from realsynth.config import ConfigError, load_config, to_yaml
from realsynth.studies.compare import run_or_resume
from realsynth.studies.sweep_report import (
    confirm,
    format_sweep,
    plot_sweep,
    sweep_report,
    write_best_config,
)
from realsynth.studies.sweep_space import Parameter, override, parse_space
from realsynth.studies.sweep_study import DEFAULT_STUDY, open_study
from realsynth.studies.sweep_trials import (
    fail_dead_trials,
    is_database,
    lock_path,
    retry,
    trial_folder,
)
from realsynth.training.checkpoint import CheckpointFiles
from realsynth.training.train import TrainingFailed, TrainingInterrupted
from realsynth.utils import file_lock
from realsynth.utils.atomic import atomic_write_json


def trial_config(cfg: DictConfig, params: dict[str, Any], folder: Path) -> DictConfig:
    """The base config with the trial's parameters, in the trial's folder."""
    overrides = [override(k, v) for k, v in params.items()]
    return load_config(None, [*overrides, f"OUTPUT_DIR={folder}"], base_yaml=to_yaml(cfg))


class _Pruning:
    """Training callback: reports every periodic evaluation to the trial and prunes it."""

    def __init__(self, trial: Any, source: str, metric: str) -> None:
        self.trial, self.source, self.metric = trial, source, metric
        self.last_step = 0

    def on_evaluate(self, step: int, results: dict, final: bool) -> None:
        self.last_step = step
        if final:
            return
        self.trial.report(results[self.source][self.metric], step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}")


class Objective:
    """One trial: train the sampled mix (or resume its folder) and return its validation metric.

    While the trial runs this process holds its folder's lock (released by :meth:`release`
    once Optuna has recorded the trial's end), so no other process trains in that folder, and a
    free lock on a running trial tells that its process died.
    """

    def __init__(self, cfg: DictConfig, space: list[Parameter], source: str, callbacks=()):
        self.cfg, self.space, self.source = cfg, space, source
        self.callbacks = list(callbacks)
        self.held: int | None = None

    def __call__(self, trial: Any) -> float:
        params = {p.key: p.suggest(trial) for p in self.space}
        folder = trial_folder(Path(self.cfg.OUTPUT_DIR), trial)
        folder.parent.mkdir(parents=True, exist_ok=True)
        self.held = file_lock.acquire(lock_path(folder))
        if self.held is None:
            raise RuntimeError(f"{folder} is in use by {file_lock.holder(lock_path(folder))}")
        trial.set_user_attr("folder", str(folder))
        run_cfg = trial_config(self.cfg, params, folder)
        pruning = _Pruning(trial, self.source, self.cfg.SWEEP.METRIC)
        started = time.perf_counter()
        try:
            results = run_or_resume(run_cfg, [pruning, *self.callbacks])
        except TrainingInterrupted:
            trial.set_user_attr("interrupted", True)
            raise KeyboardInterrupt from None
        except TrainingFailed as exc:
            trial.set_user_attr("steps", pruning.last_step)
            trial.set_user_attr("train_seconds", time.perf_counter() - started)
            if isinstance(exc.__cause__, optuna.TrialPruned):
                raise exc.__cause__ from None
            trial.set_user_attr("error", str(exc))
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        trial.set_user_attr("steps", run_cfg.SOLVER.MAX_ITER)
        trial.set_user_attr("train_seconds", time.perf_counter() - started)
        return results[self.source][self.cfg.SWEEP.METRIC]

    def release(self, *_: Any) -> None:
        """Release the trial's folder (an Optuna ``optimize`` callback: its end is recorded)."""
        file_lock.release(self.held)
        self.held = None


def count_trials(study: Any) -> dict[str, int]:
    """Trials by what they mean for ``SWEEP.TRIALS``: ``finished`` (complete or pruned),
    ``running``, ``failed`` (an error of the trial itself; not Ctrl-C and not a dead worker,
    whose trials are queued again)."""
    counts = {"finished": 0, "running": 0, "failed": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            counts["finished"] += 1
        elif t.state == TrialState.RUNNING:
            counts["running"] += 1
        elif t.state == TrialState.FAIL and "error" in t.user_attrs:
            counts["failed"] += 1
    return counts


def remaining(study: Any, total: int) -> int:
    """Trials still to start so that ``total`` finish (the running ones will; a queued retry
    is started first)."""
    counts = count_trials(study)
    return total - counts["finished"] - counts["running"]


def requeue_interrupted(study: Any) -> None:
    """Queue again, once, every trial a Ctrl-C interrupted (the retry resumes its folder)."""
    retried = {t.user_attrs.get("retries") for t in study.get_trials(deepcopy=False)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if not t.user_attrs.get("interrupted") or t.number in retried:
            continue
        held = file_lock.acquire(lock_path(Path(t.user_attrs["folder"])))
        if held is None:
            continue  # another process resumes it right now
        try:
            if t.number not in {u.user_attrs.get("retries") for u in study.get_trials()}:
                retry(study, t, "after_interrupt")
        finally:
            file_lock.release(held)


def work(
    cfg: DictConfig,
    space: list[Parameter],
    source: str,
    study: Any,
    callbacks=(),
    *,
    database: bool = False,
) -> None:
    """Run trials until ``SWEEP.TRIALS`` have finished (one worker). Stops early when as many
    trials failed by their own error (a space where nothing trains would never finish)."""
    objective = Objective(cfg, space, source, callbacks)
    try:
        while True:
            fail_dead_trials(study, database)
            if remaining(study, cfg.SWEEP.TRIALS) <= 0:
                return
            if count_trials(study)["failed"] >= cfg.SWEEP.TRIALS:
                print(f"realsynth: {cfg.SWEEP.TRIALS} trials failed; the sweep stops")
                return
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[objective.release])
            grid = study.sampler
            if isinstance(grid, optuna.samplers.GridSampler) and grid.is_exhausted(study):
                return
    finally:
        objective.release()


def _quiet_optuna() -> None:
    """Optuna logs every trial with tracebacks of failures; the sweep reports trials itself."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _worker(cfg_yaml: str, storage: str | None, name: str, threads: int) -> None:
    """A worker process of ``--jobs``: its own share of the cores."""
    _quiet_optuna()
    torch.set_num_threads(threads)
    cfg = load_config(None, [], base_yaml=cfg_yaml)
    space = parse_space(cfg)
    study = open_study(cfg, space, storage, name)
    # Ctrl-C: the trial is saved and marked for another try; the parent reports.
    with contextlib.suppress(KeyboardInterrupt):
        work(cfg, space, validation_source(cfg), study, database=is_database(storage))


def run_workers(cfg: DictConfig, storage: str | None, name: str, jobs: int, callbacks=()) -> None:
    """Run ``jobs`` workers on the study: this process and ``jobs - 1`` others.

    Torch threads are split between the workers (two 2-thread trainings on 2 cores run ~20x
    slower each than one alone), never more than this process has (``OMP_NUM_THREADS``); with
    several GPUs worker j sees only GPU ``j % count``.
    """
    _quiet_optuna()
    threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // jobs))
    gpus = torch.cuda.device_count()
    context = multiprocessing.get_context("spawn")
    children = []
    for j in range(1, jobs):
        previous = os.environ.get("CUDA_VISIBLE_DEVICES")
        if gpus > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(j % gpus)
        child = context.Process(target=_worker, args=(to_yaml(cfg), storage, name, threads))
        child.start()
        children.append(child)
        if gpus > 1:
            os.environ.pop("CUDA_VISIBLE_DEVICES") if previous is None else os.environ.update(
                CUDA_VISIBLE_DEVICES=previous
            )
    torch.set_num_threads(threads)
    space = parse_space(cfg)
    study = open_study(cfg, space, storage, name)
    try:
        work(cfg, space, validation_source(cfg), study, callbacks, database=is_database(storage))
    finally:
        for child in children:
            child.join()


def validation_source(cfg: DictConfig) -> str:
    """``SWEEP.SOURCE``, or the first real source with a validation set."""
    from realsynth.training.data_setup import run_sources

    sources = run_sources(cfg)
    if cfg.SWEEP.SOURCE:
        if cfg.SWEEP.SOURCE not in {s.NAME for s in sources}:
            raise ConfigError(f"SWEEP.SOURCE={cfg.SWEEP.SOURCE!r} is not a source of the run")
        return cfg.SWEEP.SOURCE
    for src in sources:
        if src.TYPE == "real" and (src.VAL_PATH or src.FORMAT == "vg150"):
            return src.NAME
    raise ConfigError("SWEEP.SOURCE: no real source has a validation set; name one")


class SweepInterrupted(Exception):
    """Ctrl-C stopped the sweep; the message says what was kept and how to go on."""


def _what_was_kept(study: Any) -> str:
    """Finished trials, and the checkpoint of the trial Ctrl-C stopped (if it got that far)."""
    counts = count_trials(study)
    stopped = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.user_attrs.get("interrupted") and "folder" in t.user_attrs
    ]
    kept = f"{counts['finished']} finished trial(s) kept"
    if stopped:
        folder = Path(stopped[-1].user_attrs["folder"])
        saved = CheckpointFiles(folder).step_files()
        kept += (
            f"; trial {stopped[-1].number} stopped with its checkpoint of step {saved[0][0]} "
            f"in {folder}"
            if saved
            else f"; trial {stopped[-1].number} stopped before its first step"
        )
    return f"interrupted: {kept}; run the same command again to continue the sweep"


def sweep(
    cfg: DictConfig,
    *,
    storage: str | None = None,
    study_name: str = DEFAULT_STUDY,
    jobs: int = 1,
    callbacks=(),
) -> dict[str, Any]:
    """``realsynth sweep``: search, report, write ``best.yaml`` and ``sweep.png``, confirm.

    Args:
        cfg: the base config (its budget is every trial's) with the ``SWEEP`` settings.
        storage: an Optuna storage URL or a journal file; default ``OUTPUT_DIR/study.journal``.
        study_name: the study to create or join (every machine of one sweep uses the same).
        jobs: worker processes on this machine (each with its share of the cores).
        callbacks: training callbacks for every trial of this process.

    Returns:
        The report (also ``OUTPUT_DIR/sweep.json``).
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    _quiet_optuna()
    space = parse_space(cfg)
    out = Path(cfg.OUTPUT_DIR)
    requeue_interrupted(open_study(cfg, space, storage, study_name))
    try:
        run_workers(cfg, storage, study_name, jobs, callbacks)
    except KeyboardInterrupt:
        raise SweepInterrupted(
            _what_was_kept(open_study(cfg, space, storage, study_name))
        ) from None
    study = open_study(cfg, space, storage, study_name)
    report = sweep_report(cfg, study, space)
    if report["best"] is not None:
        write_best_config(cfg, report["best"]["params"], out / "best.yaml")
        if cfg.SWEEP.CONFIRM_SEEDS:
            report["confirmation"] = confirm(cfg, report["best"]["params"])
    plot_sweep(report, space, out / "sweep.png")
    atomic_write_json(out / "sweep.json", report)
    print(format_sweep(report))
    return report
