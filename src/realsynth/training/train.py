"""``train``: one run into its run folder, from the first step or from where it stopped.

One process or many (``torchrun``): with a process group the model is wrapped in
``DistributedDataParallel``, every rank draws its own batches from the ``MixedBatchSampler`` and
only rank 0 writes to (and locks) the run folder.

Whatever ends a run early (Ctrl-C, SIGTERM, a corrupt image first drawn at step 19, a NaN, an
out-of-memory error, a full disk, a bug), the checkpoint of the last complete step is written
before the error reaches the caller (or, when it cannot be, the error names the step whose
checkpoint exists), and the error says how to continue.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig
from torch.utils.data import DataLoader

from realsynth.config import to_yaml
from realsynth.training import build, build_model
from realsynth.training.checkpoint import CheckpointWriteError, TrainingObjects
from realsynth.training.components import Components
from realsynth.training.data_setup import RunData
from realsynth.training.interrupt import StepInterrupt
from realsynth.training.loop import TrainingLoop
from realsynth.training.resume import restore_checkpoint
from realsynth.training.run_folder import RunFolder, RunFolderError
from realsynth.training.run_log import MetricsLog
from realsynth.training.run_report import write_final_outputs, write_skipped_samples
from realsynth.training.run_state import RunState
from realsynth.utils.atomic import atomic_write_text
from realsynth.utils.distributed import (
    all_ranks_agree,
    barrier,
    get_rank,
    get_world_size,
    init_distributed,
    seed_all,
)


class TrainingStopped(RuntimeError):
    """A run ended before ``SOLVER.MAX_ITER``; the message says what was saved and how to go on.

    Attributes:
        saved_step: the step of the checkpoint the run folder now ends with (None: none).
    """

    def __init__(self, message: str, saved_step: int | None) -> None:
        super().__init__(message)
        self.saved_step = saved_step


class TrainingInterrupted(TrainingStopped):
    """Ctrl-C or SIGTERM. The first one lets the current step finish (or stops the final
    evaluation, the steps being saved); a second one stops at once.

    Attributes:
        exit_status: what a shell reports for the signal: 130 (Ctrl-C), 143 (SIGTERM).
    """

    def __init__(self, message: str, saved_step: int | None, signum: int = signal.SIGINT) -> None:
        super().__init__(message, saved_step)
        self.exit_status = 128 + int(signum)


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
        TrainingInterrupted: Ctrl-C or SIGTERM, after the checkpoint of the last complete step
            is written.
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
    """Build the run, restore it when resuming, train it and write its final outputs."""
    is_main = get_rank() == 0
    build_model.fill_pixel_stats(cfg)  # the backbone's normalization, recorded in config.yaml
    data = build.build_data(cfg)
    model, criterion = build_model.build_model_and_criterion(cfg, data, device)
    build_model.check_model_outputs(cfg, data, model, device)
    if not resume:  # a resumed run restores its own checkpoint instead
        build_model.load_initial_weights(cfg, model, folder.path if is_main else None)
    optimizer = build.build_optimizer(cfg, model)
    scheduler = build.build_scheduler(cfg, optimizer)
    adaptive = build.build_adaptive(cfg, data)
    loader = build.build_train_loader(cfg, data, device, adaptive)
    state = RunState()
    if resume:
        objects = TrainingObjects(model, optimizer, scheduler, loader.batch_sampler, adaptive)
        state = restore_checkpoint(folder.checkpoint_files, objects)
        done = folder.finished_results(state.step, cfg.SOLVER.MAX_ITER)
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
    log = _open_outputs(cfg, folder, data, loader, state, resume) if is_main else None
    loop = TrainingLoop(parts, folder, log, build.best_metric_key(cfg, data), callbacks)
    loop.saved_step = state.step if resume else None
    try:
        results = _run_and_finish(loop, state, folder)
    finally:
        if log is not None:
            log.close()
    if is_main:
        write_final_outputs(folder.path, results, state)
    # Every rank leaves together: a rank tearing its process group down while rank 0 still
    # writes the outputs can abort in gloo's destructor.
    barrier()
    return results


def _open_outputs(
    cfg: DictConfig,
    folder: RunFolder,
    data: RunData,
    loader: DataLoader,
    state: RunState,
    resume: bool,
) -> MetricsLog:
    """Rank 0: write the run's config, holdout and skipped samples, print the run's summary and
    open its metrics log."""
    atomic_write_text(folder.path / "config.yaml", to_yaml(cfg))
    if data.holdout is not None:
        data.holdout.write(folder.path)
    write_skipped_samples(folder.path, data)
    build.print_run_summary(cfg, data, loader)
    redo_final = state.step >= cfg.SOLVER.MAX_ITER
    return MetricsLog(
        folder.path, resume_step=state.step if resume else None, redo_final=redo_final
    )


def _run_and_finish(
    loop: TrainingLoop, state: RunState, folder: RunFolder
) -> dict[str, dict[str, float]]:
    """Train, then the final evaluation; whatever stops them keeps the last complete step."""
    interrupt = StepInterrupt()
    try:
        with interrupt:
            loop.run(state, interrupt)
            # One process: the first signal stops the final evaluation at once (with several,
            # ranks stopping at different points of it would wait on each other forever).
            return loop.finish(state, interrupt if get_world_size() == 1 else None)
    except KeyboardInterrupt:
        barrier()  # every rank stopped after the same step (StepInterrupt agrees on it)
        signum = interrupt.signum or signal.SIGINT
        what = (
            "interrupted" if signum == signal.SIGINT else f"terminated by {interrupt.signal_name}"
        )
        message, saved = _keep_what_was_done(loop, state, folder, what)
        raise TrainingInterrupted(message, saved, signum) from None
    except Exception as exc:
        message, saved = _keep_what_was_done(loop, state, folder, _cause(exc), error=exc)
        raise TrainingFailed(message, saved) from exc


def _cause(exc: BaseException) -> str:
    """The first line of an error, with its type (a checkpoint write names its file instead)."""
    if isinstance(exc, CheckpointWriteError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no message'}"


def _keep_what_was_done(
    loop: TrainingLoop,
    state: RunState,
    folder: RunFolder,
    what: str,
    *,
    error: BaseException | None = None,
) -> tuple[str, int | None]:
    """Save the last complete step if it is not saved yet; the message and the saved step (that
    of a checkpoint on disk: a write that failed saved nothing)."""
    run = folder.path
    if loop.final_evaluation:
        return (
            f"stopped during the final evaluation ({what}); all {state.step} steps are trained "
            f"and saved in {run / 'checkpoints' / 'last.pt'}: evaluate them with `realsynth eval "
            f"{run}`, or `realsynth train --resume {run}` redoes only the final evaluation",
            loop.saved_step,
        )
    at = f"stopped at step {state.step + 1} ({what})"
    failed = error if isinstance(error, CheckpointWriteError) else None
    if failed is None and loop.can_save and state.step > 0 and state.step != loop.saved_step:
        failed = _save(loop, state)
        if failed is None:
            resume = f"continue with `realsynth train --resume {run}`"
            return f"{at}; saved the checkpoint of step {state.step}; {resume}", state.step
    return _what_is_kept(loop, folder, at, failed, error), loop.saved_step


def _save(loop: TrainingLoop, state: RunState) -> BaseException | None:
    """Write the checkpoint of the last complete step; the reason it could not be, or None."""
    try:
        loop.save(state)
    except (CheckpointWriteError, KeyboardInterrupt) as exc:
        return exc
    return None


def _what_is_kept(
    loop: TrainingLoop,
    folder: RunFolder,
    at: str,
    failed: BaseException | None,
    error: BaseException | None,
) -> str:
    """The message when the stopped step was not saved now: the checkpoint that exists, if any."""
    run = folder.path
    disk_full = isinstance(failed, CheckpointWriteError) and failed.disk_full
    then = f"free space on the disk of {run}, then " if disk_full else ""
    if not loop.can_save:
        why = "that step was half done, so "
    elif failed is not None and failed is not error:
        reason = failed.strerror if isinstance(failed, CheckpointWriteError) else "interrupted"
        why = f"its checkpoint could not be written ({reason}), so "
    else:
        why = ""
    if loop.saved_step is not None:
        kept = f"the last checkpoint (step {loop.saved_step}) is kept"
        return f"{at}; {why}{kept}; {then}continue with `realsynth train --resume {run}`"
    if get_rank() == 0:
        folder.prepare(resume=False, overwrite=True, command="realsynth train")
    if failed is None and not why:
        return f"{at}; nothing was saved (no step had completed); run the same command again"
    return f"{at}; {why}no checkpoint exists; {then}run the same command again"
