"""Reopening a finished run: its model rebuilt from a checkpoint and the saved config
(``data filter``, ``gap``), and ``realsynth eval``, which scores it on its own or other data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from realsynth.config import load_config
from realsynth.evaluation.evaluate import evaluate_sources, summaries
from realsynth.evaluation.records import save_records
from realsynth.training.build import (
    build_device,
    build_evaluator_factory,
)
from realsynth.training.build_model import build_model_and_criterion
from realsynth.training.checkpoint import MODEL_KEYS, load_checkpoint, load_model_weights
from realsynth.training.data_setup import RunData, build_data, build_test_sets, evaluation_loaders
from realsynth.utils.atomic import atomic_write_json
from realsynth.utils.distributed import get_rank
from realsynth.utils.tables import format_table


@dataclass
class RunModel:
    """A run's config, data, model (in eval mode, on ``device``) and checkpoint path."""

    cfg: DictConfig
    data: RunData
    model: nn.Module
    device: torch.device
    checkpoint: Path


def load_run_model(run: str | Path, *, prefer: str = "best.pt") -> RunModel:
    """The model of a run folder (its ``checkpoints/<prefer>``, else ``last.pt``) or of a
    checkpoint file.

    Raises:
        FileNotFoundError: no checkpoint there.
    """
    run = Path(run)
    checkpoint = run / "checkpoints" / prefer if run.is_dir() else run
    if run.is_dir() and not checkpoint.exists():
        checkpoint = run / "checkpoints" / "last.pt"
    state: dict[str, Any] = load_checkpoint(checkpoint, required=MODEL_KEYS)
    cfg = load_config(None, base_yaml=state["config"])
    data = build_data(cfg)
    device = build_device(cfg)
    model, _ = build_model_and_criterion(cfg, data, device)
    load_model_weights(model, state["model"], checkpoint, _NOT_ITS_CONFIG)
    return RunModel(cfg, data, model.eval(), device, checkpoint)


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data_config: str | Path | None = None,
    overrides: Sequence[str] = (),
    output: str | Path | None = None,
    split: str = "val",
    quiet: bool = False,
) -> dict[str, dict[str, float]]:
    """``realsynth eval``: score a run folder or checkpoint on its (or another config's) sets.

    The model settings come from the config saved with the checkpoint; ``data_config`` replaces
    the datasets. Prints the table (unless ``quiet``) and writes the results to ``output``, by
    default ``eval_<checkpoint>[_<data config>][_test].json`` in the run folder
    (``eval_last.json``, ``eval_best_other.json``, ...): the run's own ``eval.json`` is never
    replaced. Every image's records go beside it, ``<output stem>_records.npz``.

    Args:
        split: ``val`` (the validation sets) or ``test`` (each source's test split, for reports
            that model selection never saw).
    """
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    state = load_checkpoint(checkpoint, required=MODEL_KEYS)
    cfg = load_config(None, overrides, base_yaml=state["config"])
    if data_config is not None:
        datasets = OmegaConf.to_container(load_config(data_config).DATASETS)
        cfg = OmegaConf.merge(cfg, {"DATASETS": datasets})
    data = build_data(cfg)
    sets = data.val if split == "val" else build_test_sets(cfg)
    if not sets:
        raise ValueError(f"{checkpoint}: no source has a {split} set (VAL_PATH / TEST_PATH)")
    _check_label_space(checkpoint, state["model"], data)
    device = build_device(cfg)
    model, _ = build_model_and_criterion(cfg, data, device)
    load_model_weights(model, state["model"], *_fit_advice(checkpoint, overrides))
    evaluators = evaluate_sources(
        model,
        evaluation_loaders(cfg, sets),
        device=device,
        top_k=cfg.TEST.TOP_K,
        new_evaluator=build_evaluator_factory(cfg, data),
    )
    results = summaries(evaluators)
    if get_rank() == 0:
        target = (
            Path(output) if output is not None else _default_output(checkpoint, data_config, split)
        )
        atomic_write_json(target, results)
        save_records(target.with_name(f"{target.stem}_records.npz"), evaluators)
        if not quiet:
            print(format_table(results))
            print(f"written to {target}")
    return results


_NOT_ITS_CONFIG = (
    "the config saved in it describes another model; use a checkpoint that `realsynth train` wrote"
)


def _fit_advice(checkpoint: str | Path, overrides: Sequence[str]) -> tuple[Path, str]:
    """The file a run folder or checkpoint argument reads (``checkpoints/last.pt`` of a folder),
    and what to do when its weights do not fit the model built for it."""
    checkpoint = Path(checkpoint)
    path = checkpoint / "checkpoints" / "last.pt" if checkpoint.is_dir() else checkpoint
    if any(o.strip().upper().startswith("MODEL.") for o in overrides):
        return (
            path,
            "evaluate it with the model it was trained as (leave out the MODEL.* overrides)",
        )
    return path, _NOT_ITS_CONFIG


def _default_output(checkpoint: str | Path, data_config: str | Path | None, split: str) -> Path:
    """``eval_<checkpoint stem>[_<data config stem>][_test].json`` in the run folder."""
    checkpoint = Path(checkpoint)
    stem = "last" if checkpoint.is_dir() else checkpoint.stem
    suffix = f"_{Path(data_config).stem}" if data_config is not None else ""
    suffix += "_test" if split == "test" else ""
    return _run_folder(checkpoint) / f"eval_{stem}{suffix}.json"


def _check_label_space(checkpoint: str | Path, weights: dict[str, Any], data: Any) -> None:
    """The validation data must have the label space the checkpoint was trained on."""
    trained = (
        weights["subject_class.weight"].shape[0] - 1,
        weights["relation_class.weight"].shape[0] - 1,
    )
    given = (len(data.classes), len(data.predicates))
    if trained != given:
        raise ValueError(
            f"{checkpoint}: trained for {trained[0]} classes and {trained[1]} predicates, but the "
            f"evaluation data has {given[0]} and {given[1]}; evaluate on data of the same labels"
        )


def _run_folder(checkpoint: Path) -> Path:
    """The run folder of a checkpoint argument: itself, or the folder above ``checkpoints/``."""
    if checkpoint.is_dir():
        return checkpoint
    parent = checkpoint.parent
    return parent.parent if parent.name == "checkpoints" else parent
