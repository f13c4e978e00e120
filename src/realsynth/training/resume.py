"""Resuming a run: which checkpoint it continues from (and why that one), whether the new config
and the checkpoint fit the run (its stream, its model), and restoring it into fresh objects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from realsynth.config import ConfigError
from realsynth.config.keys import flat_keys
from realsynth.training.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    RESUME_KEYS,
    CheckpointFiles,
    TrainingObjects,
    UnusableCheckpoint,
    load_checkpoint,
    load_model_weights,
    restore_rng_states,
)
from realsynth.training.run_state import RunState
from realsynth.utils.distributed import get_rank


@dataclass
class ChosenCheckpoint:
    """The checkpoint a run resumes from, and why the newer ones were passed over.

    Attributes:
        path: the file read.
        contents: what it holds.
        passed_over: per newer candidate that could not be read, its name and what is wrong
            (``last.pt is unreadable (...)``).
    """

    path: Path
    contents: dict[str, Any]
    passed_over: list[str]

    def describe(self, run_dir: Path) -> str:
        """One line: the file restored, its step, and why this one."""
        where = self.path.relative_to(run_dir) if self.path.is_relative_to(run_dir) else self.path
        step = self.contents["run_state"]["step"]
        if self.passed_over:
            return f"resuming from {where} (step {step}; {'; '.join(self.passed_over)})"
        if self.path.name == BEST_NAME:
            why = f"the only checkpoint: there is no {LAST_NAME} and no step checkpoint"
        else:
            why = "the newest checkpoint"
        return f"resuming from {where} (step {step}, {why})"


def choose_checkpoint(files: CheckpointFiles) -> ChosenCheckpoint:
    """The newest readable checkpoint to resume from (order: :meth:`CheckpointFiles.candidates`).

    Raises:
        FileNotFoundError: the run has no checkpoint.
        ValueError: none of them can be read (each one's reason).
    """
    candidates = files.candidates()
    if not candidates:
        raise FileNotFoundError(f"--resume {files.run_dir}: no checkpoint in {files.path}")
    unreadable: list[str] = []
    for path in candidates:
        try:
            return ChosenCheckpoint(path, load_checkpoint(path, required=RESUME_KEYS), unreadable)
        except UnusableCheckpoint as exc:
            unreadable.append(f"{path.name} {exc.problem}")
    raise ValueError(
        f"--resume {files.run_dir}: no readable checkpoint in {files.path}: {'; '.join(unreadable)}"
    )


def restore_checkpoint(files: CheckpointFiles, objects: TrainingObjects) -> RunState:
    """Load the newest readable checkpoint into fresh objects (not yet wrapped for DDP), saying
    which and why; refuse a changed stream or a checkpoint of another model.

    Returns:
        Where the restored run stands.

    Raises:
        FileNotFoundError / ValueError: no readable checkpoint (see :func:`choose_checkpoint`),
            or the checkpoint does not fit this run's stream or model.
        ConfigError: the adaptive mixer's state does not fit its settings.
    """
    chosen = choose_checkpoint(files)
    if get_rank() == 0:
        print(f"realsynth: {chosen.describe(files.run_dir)}", flush=True)
    ckpt = chosen.contents
    _check_same_stream(files.run_dir, ckpt["sampler"], objects.sampler.state_dict())
    if objects.adaptive is not None:
        _restore_adaptive(files.run_dir, ckpt, objects)
    fix = (
        f"it was not written by the model {files.run_dir / 'config.yaml'} describes; resume "
        "from the run's own checkpoints, or train it anew with --overwrite"
    )
    load_model_weights(objects.model, ckpt["model"], chosen.path, fix)
    objects.optimizer.load_state_dict(ckpt["optimizer"])
    objects.scheduler.load_state_dict(ckpt["scheduler"])
    # All ranks start from the same seed and draw alike, so rank 0's states serve every rank.
    restore_rng_states(ckpt["rng"])
    return RunState.from_dict(ckpt["run_state"])


def _restore_adaptive(run_dir: Path, ckpt: dict[str, Any], objects: TrainingObjects) -> None:
    """The adaptive mixer's state and the sampler's share history."""
    if "adaptive" not in ckpt:
        raise ValueError(
            f"{run_dir}: the checkpoint was written without adaptive mixing; resume with "
            "DATASETS.MULTI_DATASET.ADAPTIVE.ENABLED=false"
        )
    try:
        objects.adaptive.load_state_dict(ckpt["adaptive"])
    except ValueError as exc:
        key = "DATASETS.MULTI_DATASET.ADAPTIVE.INTERVAL"
        raise ConfigError(f"{run_dir}: {key}: {exc}", key) from None
    objects.sampler.load_share_history(ckpt["sampler"])


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


#: What a resumed run may change: none of these alters the data stream, the model or the
#: optimizer (how long it trains; how often it evaluates, logs and saves; where it runs; how it is
#: evaluated, compared and swept).
RESUME_MAY_CHANGE = (
    "OUTPUT_DIR",
    "SOLVER.MAX_ITER",
    "SOLVER.LOG_PERIOD",
    "SOLVER.CHECKPOINT_PERIOD",
    "SOLVER.KEEP_CHECKPOINTS",
    "DATALOADER.NUM_WORKERS",
    "MODEL.DEVICE",
    "INPUT.MIN_SIZE_TEST",
    "INPUT.MAX_SIZE_TEST",
)
_MAY_CHANGE_UNDER = ("TEST.", "SWEEP.", "COMPARE.")
_MAY_CHANGE_IN_A_SOURCE = (".TEST_PATH", ".TEST_IMAGE_ROOT")  # test reports only
_ABSENT = object()


def check_resume_config(run_dir: Path, saved: DictConfig, cfg: DictConfig) -> None:
    """Refuse a resumed run whose config changes its data stream, model or optimizer.

    Args:
        run_dir: the run folder (named in the message).
        saved: the run's own config (its ``config.yaml``).
        cfg: the config this command would resume it with.

    Raises:
        ConfigError: the keys that changed and may not, in one line.
    """
    before, after = flat_keys(OmegaConf.to_container(saved)), flat_keys(OmegaConf.to_container(cfg))
    changed = [
        key
        for key in dict.fromkeys([*before, *after])
        if before.get(key, _ABSENT) != after.get(key, _ABSENT) and not _may_change(key)
    ]
    if not changed:
        return
    listed = ", ".join(f"{k} ({_shown(before, k)} -> {_shown(after, k)})" for k in changed)
    raise ConfigError(
        f"--resume {run_dir}: this command changes {listed}, which would change the run's data, "
        "model or optimizer; resume with the run's own settings (only SOLVER.MAX_ITER and the "
        "evaluation, logging, checkpoint and device settings may change) or start a new run "
        "with another OUTPUT_DIR",
        tuple(changed),
    )


def _may_change(key: str) -> bool:
    return (
        key in RESUME_MAY_CHANGE
        or key.startswith(_MAY_CHANGE_UNDER)
        or (key.startswith("DATASETS.SOURCES[") and key.endswith(_MAY_CHANGE_IN_A_SOURCE))
    )


def _shown(values: dict[str, Any], key: str) -> str:
    value = values.get(key, _ABSENT)
    return "unset" if value is _ABSENT else str(value)
