"""The model of a finished run, rebuilt from its checkpoint and saved config (for tools that
use a trained model on other data: ``data filter``, ``gap``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from realsynth.config import load_config
from realsynth.engine.build import build_model_and_criterion
from realsynth.engine.checkpoint import load_checkpoint
from realsynth.engine.data_setup import RunData, build_data
from realsynth.engine.launch import resolve_device


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
    state: dict[str, Any] = load_checkpoint(checkpoint, required=("model", "config"))
    cfg = load_config(None, base_yaml=state["config"])
    data = build_data(cfg)
    device = resolve_device(cfg.MODEL.DEVICE)
    model, _ = build_model_and_criterion(cfg, data, device)
    model.load_state_dict(state["model"])
    return RunModel(cfg, data, model.eval(), device, checkpoint)
