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
import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
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
from realsynth.training.train import TrainingFailed, TrainingInterrupted
from realsynth.utils.atomic import atomic_write_json

JOURNAL = "study.journal"
DEFAULT_STUDY = "realsynth-sweep"
_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def storage_for(out: Path, storage: str | None) -> Any:
    """An Optuna storage: an RDB URL as given, else a journal file (default in ``out``)."""
    if storage and "://" in storage:
        return storage
    path = Path(storage) if storage else out / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend)


def make_sampler(
    cfg: DictConfig, space: list[Parameter], worker: int = 0
) -> optuna.samplers.BaseSampler:
    """TPE, random or grid, seeded with ``SEED`` (worker ``j`` of ``--jobs`` with its own seed
    derived from it: identical seeds would draw the same parameters in two processes)."""
    seed = cfg.SEED
    if worker:
        seed = int(np.random.SeedSequence([cfg.SEED, worker]).generate_state(1)[0] % 2**31)
    kind = cfg.SWEEP.SAMPLER
    if kind == "grid":
        grid = {p.key: p.grid(cfg.SWEEP.GRID_POINTS) for p in space}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, cfg.SWEEP.TRIALS))


def make_pruner(cfg: DictConfig) -> optuna.pruners.BasePruner:
    if cfg.SWEEP.PRUNER == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3)
    if cfg.SWEEP.PRUNER == "successive_halving":
        # Rungs at the first evaluation and 3x, 9x ... its step: Optuna's "auto" guesses 1% of
        # the first finished trial, which puts a rung at nearly every report and prunes little.
        first = cfg.TEST.EVAL_PERIOD or cfg.SOLVER.MAX_ITER
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(
    cfg: DictConfig, space: list[Parameter], storage: str | None, name: str, worker: int = 0
) -> Any:
    """Create the study or join it; a study searched with another space is refused."""
    study = optuna.create_study(
        study_name=name,
        storage=storage_for(Path(cfg.OUTPUT_DIR), storage),
        sampler=make_sampler(cfg, space, worker),
        pruner=make_pruner(cfg),
        direction="maximize",
        load_if_exists=True,
    )
    signature = json.dumps([[p.key, p.type, p.low, p.high, list(p.choices)] for p in space])
    known = study.user_attrs.get("space")
    if known is None:
        study.set_user_attr("space", signature)
        study.set_user_attr("base_config", to_yaml(cfg))
    elif known != signature:
        raise ConfigError(
            f"study {name!r} was searched over another SWEEP.SPACE ({known}); use another --study "
            "or the same space"
        )
    return study


def trial_folder(cfg: DictConfig, params: dict[str, Any]) -> Path:
    """A trial's run folder, named by its parameters (the same parameters reuse the folder)."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.OUTPUT_DIR) / "trials" / digest


def trial_config(cfg: DictConfig, params: dict[str, Any]) -> DictConfig:
    """The base config with the trial's parameters, in the trial's folder."""
    overrides = [override(k, v) for k, v in params.items()]
    return load_config(
        None,
        [*overrides, f"OUTPUT_DIR={trial_folder(cfg, params)}"],
        base_yaml=to_yaml(cfg),
    )


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
    """One trial: train the sampled mix (or resume it) and return its validation metric."""

    def __init__(self, cfg: DictConfig, space: list[Parameter], source: str, callbacks=()):
        self.cfg, self.space, self.source = cfg, space, source
        self.callbacks = list(callbacks)

    def __call__(self, trial: Any) -> float:
        params = {p.key: p.suggest(trial) for p in self.space}
        run_cfg = trial_config(self.cfg, params)
        trial.set_user_attr("folder", str(run_cfg.OUTPUT_DIR))
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


def remaining(study: Any, total: int) -> int:
    """Trials still to start: finished, running and queued ones count; failed ones too, except
    those a Ctrl-C interrupted (they are tried again)."""
    done = sum(
        t.state in _COUNTED or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))
        for t in study.get_trials(deepcopy=False)
    )
    return total - done


def requeue_interrupted(study: Any) -> None:
    """Queue the parameters of every trial a Ctrl-C interrupted, once (their folder resumes)."""
    trials = study.get_trials(deepcopy=False)
    again = {t.user_attrs.get("resumes") for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in again:
            study.enqueue_trial(t.params, user_attrs={"resumes": t.number})


def work(cfg: DictConfig, space: list[Parameter], source: str, study: Any, callbacks=()) -> None:
    """Run trials until the study has ``SWEEP.TRIALS`` of them (one worker)."""
    objective = Objective(cfg, space, source, callbacks)
    while remaining(study, cfg.SWEEP.TRIALS) > 0:
        study.optimize(objective, n_trials=1, catch=(Exception,))
        if cfg.SWEEP.SAMPLER == "grid" and _grid_exhausted(study):
            break


def _grid_exhausted(study: Any) -> bool:
    sampler = study.sampler
    return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


def _worker(cfg_yaml: str, storage: str | None, name: str, threads: int, worker: int) -> None:
    """A worker process of ``--jobs``: its own share of the cores and sampler seed."""
    torch.set_num_threads(threads)
    cfg = load_config(None, [], base_yaml=cfg_yaml)
    space = parse_space(cfg)
    study = open_study(cfg, space, storage, name, worker)
    # Ctrl-C: the trial is saved and marked for another try; the parent reports.
    with contextlib.suppress(KeyboardInterrupt):
        work(cfg, space, validation_source(cfg), study)


def run_workers(cfg: DictConfig, storage: str | None, name: str, jobs: int, callbacks=()) -> None:
    """Run ``jobs`` workers on the study: this process and ``jobs - 1`` others.

    Torch threads are split between the workers (two 2-thread trainings on 2 cores run ~20x
    slower each than one alone), never more than this process has (``OMP_NUM_THREADS``); with
    several GPUs worker j sees only GPU ``j % count``.
    """
    threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // jobs))
    gpus = torch.cuda.device_count()
    context = multiprocessing.get_context("spawn")
    children = []
    for j in range(1, jobs):
        previous = os.environ.get("CUDA_VISIBLE_DEVICES")
        if gpus > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(j % gpus)
        child = context.Process(target=_worker, args=(to_yaml(cfg), storage, name, threads, j))
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
        work(cfg, space, validation_source(cfg), study, callbacks)
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
    space = parse_space(cfg)
    out = Path(cfg.OUTPUT_DIR)
    requeue_interrupted(open_study(cfg, space, storage, study_name))
    run_workers(cfg, storage, study_name, jobs, callbacks)
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
