"""``train``: one run into its run folder, from the first step or from where it stopped.

One process or many (``torchrun``): with a process group the model is wrapped in
``DistributedDataParallel``, every rank draws its own batches from the ``MixedBatchSampler`` and
only rank 0 writes to (and locks) the run folder.

Whatever ends a run early (Ctrl-C, a corrupt image first drawn at step 19, a NaN, an
out-of-memory error, a bug), the checkpoint of the last complete step is written before the
error reaches the caller, and the error says how to continue.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from realsynth.config import ConfigError, to_yaml
from realsynth.training import build
from realsynth.training.checkpoint import load_checkpoint, restore_rng_states
from realsynth.training.interrupt import StepInterrupt
from realsynth.training.loop import Components, TrainingLoop
from realsynth.training.run_folder import RunFolder, RunFolderError
from realsynth.training.run_log import MetricsLog, read_metrics
from realsynth.training.run_report import write_final_outputs, write_skipped_samples
from realsynth.training.run_state import RunState
from realsynth.utils.atomic import atomic_write_text
from realsynth.utils.distributed import (
    all_ranks_agree,
    barrier,
    get_rank,
    init_distributed,
    seed_all,
)

RESUME_KEYS = ("model", "optimizer", "scheduler", "run_state", "sampler", "rng")


class TrainingStopped(RuntimeError):
    """A run ended before ``SOLVER.MAX_ITER``; the message says what was saved and how to go on.

    Attributes:
        saved_step: the step of the checkpoint the run folder now ends with (None: none).
    """

    def __init__(self, message: str, saved_step: int | None) -> None:
        super().__init__(message)
        self.saved_step = saved_step


class TrainingInterrupted(TrainingStopped):
    """Ctrl-C. The first one lets the current step finish; a second one stops at once."""


class TrainingFailed(TrainingStopped):
    """An error during training; the original exception is ``__cause__``."""


def train(
    cfg: DictConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Any] = (),
) -> dict[str, dict[str, float]]:
    """Train with ``cfg`` into ``cfg.OUTPUT_DIR``; returns the final recall per validation source.

    Args:
        cfg: resolved run config (see :mod:`realsynth.config`).
        resume: continue from the newest readable checkpoint of ``OUTPUT_DIR`` (model,
            optimizer, scheduler, sampler position and RNG states), reproducing the
            uninterrupted run. A run that already finished returns its saved results.
        overwrite: replace the run that ``OUTPUT_DIR`` holds (without it, such a folder is
            refused).
        callbacks: objects with optional ``on_step_start(step)`` / ``on_step_end(step, record)``.

    Raises:
        RunFolderError: the folder holds another run, or another process uses it.
        TrainingInterrupted: Ctrl-C, after the checkpoint of the last complete step is written.
        TrainingFailed: any other error during training, after the same.
    """
    device = build.build_device(cfg)
    init_distributed(device)
    seed_all(cfg.SEED)
    folder = RunFolder(cfg.OUTPUT_DIR, keep=cfg.SOLVER.KEEP_CHECKPOINTS)
    _claim(folder, resume=resume, overwrite=overwrite, device=device)
    try:
        return _train(cfg, folder, device, resume, callbacks)
    finally:
        folder.unlock()


def _claim(folder: RunFolder, *, resume: bool, overwrite: bool, device: Any) -> None:
    """Rank 0 locks and checks the folder; every rank learns whether that worked."""
    error: RunFolderError | None = None
    if get_rank() == 0:
        try:
            folder.lock()
            folder.prepare(resume=resume, overwrite=overwrite, command="realsynth train")
        except RunFolderError as exc:
            folder.unlock()
            error = exc
    if not all_ranks_agree(error is None, device):
        raise error or RunFolderError(f"rank 0 could not use the run folder {folder.path}")


def _train(
    cfg: DictConfig, folder: RunFolder, device: Any, resume: bool, callbacks: Sequence[Any]
) -> dict[str, dict[str, float]]:
    is_main = get_rank() == 0
    data = build.build_data(cfg)
    model, criterion = build.build_model_and_criterion(cfg, data, device)
    optimizer = build.build_optimizer(cfg, model)
    scheduler = build.build_scheduler(cfg, optimizer)
    adaptive = build.build_adaptive(cfg, data)
    loader = build.build_train_loader(cfg, data, device, adaptive)
    state = RunState()
    if resume:
        state = _restore(folder, model, optimizer, scheduler, loader.batch_sampler, adaptive)
        done = _finished_results(folder, state, cfg.SOLVER.MAX_ITER)
        if done is not None:
            return done
    parts = Components(
        build.build_loop_settings(cfg),
        to_yaml(cfg),
        build.build_evaluator_factory(cfg, data),
        functools.partial(data.val_loaders, cfg),
        data,
        build.wrap_distributed(model, device),
        criterion,
        optimizer,
        scheduler,
        loader,
        device,
        adaptive,
    )
    if is_main:
        atomic_write_text(folder.path / "config.yaml", to_yaml(cfg))
        if data.holdout is not None:
            data.holdout.write(folder.path)
        write_skipped_samples(folder.path, data)
        build.print_run_summary(cfg, data, loader)
    log = None
    if is_main:
        redo_final = state.step >= cfg.SOLVER.MAX_ITER
        log = MetricsLog(
            folder.path, resume_step=state.step if resume else None, redo_final=redo_final
        )
    loop = TrainingLoop(parts, folder, log, build.best_metric_key(cfg, data), callbacks)
    loop.saved_step = state.step if resume else None
    try:
        with StepInterrupt() as interrupt:
            loop.run(state, interrupt)
            results = loop.finish(state)
    except KeyboardInterrupt:
        barrier()  # every rank stopped after the same step (StepInterrupt agrees on it)
        raise TrainingInterrupted(
            *_keep_what_was_done(loop, state, folder, "interrupted")
        ) from None
    except Exception as exc:
        message, saved = _keep_what_was_done(loop, state, folder, _cause(exc))
        raise TrainingFailed(message, saved) from exc
    finally:
        if log is not None:
            log.close()
    if is_main:
        write_final_outputs(folder.path, results, state)
    # Every rank leaves together: a rank tearing its process group down while rank 0 still
    # writes the outputs can abort in gloo's destructor.
    barrier()
    return results


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no message'}"


def _keep_what_was_done(
    loop: TrainingLoop, state: RunState, folder: RunFolder, what: str
) -> tuple[str, int | None]:
    """Save the last complete step if it is not saved yet; the message and the saved step."""
    at = f"stopped at step {state.step + 1} ({what})"
    resume = f"continue with `realsynth train --resume {folder.path}`"
    if loop.can_save and state.step > 0 and state.step != loop.saved_step:
        loop.save(state)
        return f"{at}; saved the checkpoint of step {state.step}; {resume}", state.step
    if loop.saved_step is not None:
        how = "that step was half done, so " if not loop.can_save else ""
        return (
            f"{at}; {how}the last checkpoint (step {loop.saved_step}) is kept; {resume}",
            loop.saved_step,
        )
    if get_rank() == 0:
        folder.prepare(resume=False, overwrite=True, command="realsynth train")
    return f"{at}; nothing was saved (no step had completed); run the same command again", None


def _restore(
    folder: RunFolder,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    sampler: Any,
    adaptive: Any = None,
) -> RunState:
    """Load the newest readable checkpoint into the fresh objects; refuse a changed stream."""
    candidates = folder.resume_candidates()
    if not candidates:
        raise FileNotFoundError(f"--resume {folder.path}: no checkpoint in {folder.checkpoints}")
    unreadable = []
    for path in candidates:
        try:
            ckpt = load_checkpoint(path, required=RESUME_KEYS)
            break
        except ValueError as exc:
            unreadable.append(str(exc))
    else:
        raise ValueError(f"--resume {folder.path}: no readable checkpoint: {'; '.join(unreadable)}")
    if unreadable and get_rank() == 0:
        print(f"realsynth: {'; '.join(unreadable)}; resuming from {path} instead")
    _check_same_stream(folder.path, ckpt["sampler"], sampler.state_dict())
    if adaptive is not None:
        if "adaptive" not in ckpt:
            raise ValueError(
                f"{folder.path}: the checkpoint was written without adaptive mixing; resume with "
                "DATASETS.MULTI_DATASET.ADAPTIVE.ENABLED=false"
            )
        try:
            adaptive.load_state_dict(ckpt["adaptive"])
        except ValueError as exc:
            key = "DATASETS.MULTI_DATASET.ADAPTIVE.INTERVAL"
            raise ConfigError(f"{folder.path}: {key}: {exc}", key) from None
        sampler.load_share_history(ckpt["sampler"])
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    # All ranks start from the same seed and draw alike, so rank 0's states serve every rank.
    restore_rng_states(ckpt["rng"])
    return RunState.from_dict(ckpt["run_state"])


def _check_same_stream(run_dir: Path, saved: dict[str, Any], live: dict[str, Any]) -> None:
    """A resumed run must draw from the same stream: same seed, global batch size and ratio
    schedules."""
    saved_batch = saved["batch_size"] * saved["world_size"]
    live_batch = live["batch_size"] * live["world_size"]
    if saved["seed"] != live["seed"] or saved_batch != live_batch:
        raise ValueError(
            f"{run_dir}: the checkpoint was written with SEED={saved['seed']} and global batch "
            f"{saved_batch}, this run has SEED={live['seed']} and global batch {live_batch}; "
            "resume with the run's own SEED and SOLVER.IMS_PER_BATCH"
        )
    if saved.get("ratio_schedules") != live.get("ratio_schedules"):
        raise ValueError(
            f"{run_dir}: the checkpoint was written with the ratio schedules "
            f"{saved.get('ratio_schedules')}, this run has {live.get('ratio_schedules')}; resume "
            "with the run's own schedule (an unset END_STEP or PRETRAIN_STEPS follows "
            "SOLVER.MAX_ITER: set it explicitly to extend a run and keep its schedule)"
        )


def _finished_results(
    folder: RunFolder, state: RunState, max_iter: int
) -> dict[str, dict[str, float]] | None:
    """The saved results when the run already made its final evaluation at its last step."""
    if state.step < max_iter:
        return None
    if state.step > max_iter:
        raise ValueError(
            f"--resume {folder.path}: its checkpoint is at step {state.step}, past "
            f"SOLVER.MAX_ITER={max_iter}; raise SOLVER.MAX_ITER to continue"
        )
    records = read_metrics(folder.path) if (folder.path / "metrics.jsonl").exists() else []
    final = any(
        r.get("kind") == "eval" and r.get("final") and r["step"] == state.step for r in records
    )
    results_file = folder.path / "eval.json"
    if not final or not results_file.exists():
        return None  # stopped during the final evaluation: do that now
    if get_rank() == 0:
        print(
            f"realsynth: {folder.path} finished at step {state.step} (SOLVER.MAX_ITER={max_iter}); "
            f"raise SOLVER.MAX_ITER to continue, e.g. `realsynth train --resume {folder.path} "
            f"SOLVER.MAX_ITER={2 * state.step}`"
        )
    return json.loads(results_file.read_text())
