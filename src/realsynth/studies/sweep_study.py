"""The Optuna study of a sweep: its storage, sampler and pruner, and the settings it is bound to.

A study records the space it searches and the config its first trial ran with; a command that
would add trials measuring something else (another budget, other data, another model) is
refused with the first differing setting, so old and new trials never mix in one ranking.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from realsynth.config import ConfigError, to_yaml
from realsynth.config.keys import flat_keys
from realsynth.studies.sweep_space import Parameter
from realsynth.studies.sweep_trials import StorageError, TrialSeededSampler, open_storage

DEFAULT_STUDY = "realsynth-sweep"
#: Settings that do not change what a trial measures: a study may be continued with others.
FREE_SETTINGS = (
    "OUTPUT_DIR",
    "SWEEP.TRIALS",
    "SWEEP.CONFIRM_SEEDS",
    "SWEEP.HEARTBEAT_SECONDS",
    "SOLVER.LOG_PERIOD",
    "SOLVER.CHECKPOINT_PERIOD",
    "SOLVER.KEEP_CHECKPOINTS",
    "DATALOADER.NUM_WORKERS",
    "MODEL.DEVICE",
)


def make_sampler(cfg: DictConfig, space: list[Parameter]) -> optuna.samplers.BaseSampler:
    """TPE or random, made afresh for every trial with a seed derived from ``SEED`` and the
    trial's number (every process draws new points; a replay draws the same), or the grid,
    whose order ``SEED`` shuffles once and whose points go to trials by number."""
    kind = cfg.SWEEP.SAMPLER
    if kind == "grid":
        grid = {p.key: p.grid(cfg.SWEEP.GRID_POINTS) for p in space}
        return optuna.samplers.GridSampler(grid, seed=cfg.SEED)
    if kind == "random":
        return TrialSeededSampler(lambda seed: optuna.samplers.RandomSampler(seed=seed), cfg.SEED)
    startup = min(5, cfg.SWEEP.TRIALS)
    return TrialSeededSampler(
        lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup), cfg.SEED
    )


def make_pruner(cfg: DictConfig) -> optuna.pruners.BasePruner:
    if cfg.SWEEP.PRUNER == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3)
    if cfg.SWEEP.PRUNER == "successive_halving":
        # Rungs at the first evaluation and 3x, 9x ... its step: Optuna's "auto" guesses 1% of
        # the first finished trial, which puts a rung at nearly every report and prunes little.
        first = cfg.TEST.EVAL_PERIOD or cfg.SOLVER.MAX_ITER
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(cfg: DictConfig, space: list[Parameter], storage: str | None, name: str) -> Any:
    """Create the study or join it; a study searched with another space, or whose trials
    measured something else (another budget, data or model), is refused.

    Raises:
        ConfigError: the storage cannot be opened, or the study was run with other settings.
    """
    try:
        backend = open_storage(Path(cfg.OUTPUT_DIR), storage, cfg.SWEEP.HEARTBEAT_SECONDS)
    except StorageError as exc:
        raise ConfigError(str(exc), "--storage") from None
    study = optuna.create_study(
        study_name=name,
        storage=backend,
        sampler=make_sampler(cfg, space),
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
    else:
        _check_same_settings(name, study.user_attrs.get("base_config"), cfg, space)
    return study


def _check_same_settings(
    name: str, recorded: str | None, cfg: DictConfig, space: list[Parameter]
) -> None:
    """Refuse to add trials that measure something else than the study's earlier ones."""
    if recorded is None:
        return
    free = {*FREE_SETTINGS, *(p.key for p in space)}
    before = flat_keys(OmegaConf.to_container(OmegaConf.create(recorded)))
    now = flat_keys(OmegaConf.to_container(OmegaConf.create(to_yaml(cfg))))
    changed = sorted(
        key
        for key in before.keys() | now.keys()
        if before.get(key) != now.get(key) and not any(_within(key, f) for f in free)
    )
    if changed:
        first = changed[0]
        more = f" (and {len(changed) - 1} more settings)" if len(changed) > 1 else ""
        raise ConfigError(
            f"study {name!r} was run with {first}={before.get(first)!r}, this command has "
            f"{now.get(first)!r}{more}; its trials would not compare: use another --study or "
            "OUTPUT_DIR",
            first,
        )


def _within(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")
