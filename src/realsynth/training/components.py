"""What one run trains with: the loop's plain settings, the built objects, and the callback
protocol (built by ``realsynth.training.build`` and ``build_model``; run by ``loop``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader

from realsynth.evaluation.recall import SceneGraphEvaluator
from realsynth.mixing.adaptive import AdaptiveMixer
from realsynth.modeling.criterion import RelationCriterion
from realsynth.training.data_setup import RunData


class TrainingCallback(Protocol):
    """Called by the loop (every method optional). An exception raised here stops the run like
    any other error: the checkpoint of the last complete step is kept."""

    def on_step_start(self, step: int) -> None:
        """Before step ``step`` (1-based) begins; its batch is already loaded."""

    def on_step_end(self, step: int, record: dict[str, float]) -> None:
        """After step ``step`` completed, with its logged record (delivered every
        log period, in order)."""

    def on_evaluate(self, step: int, results: dict[str, dict[str, float]], final: bool) -> None:
        """After an evaluation at ``step`` (``final``: the one after the last step)."""


@dataclass
class StepResult:
    """What one optimizer step logs (still on the device) and which bad samples it left out."""

    keys: tuple[str, ...]
    values: torch.Tensor
    lr: float
    num_skipped: int
    skipped: list[str] = field(default_factory=list)
    # Host-side per-source targets of the step the batch was drawn for (target_share/, weight/).
    targets: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LoopSettings:
    """The plain values the loop runs by (translated from the config by the builder)."""

    max_iter: int
    log_period: int  # steps whose records are fetched from the device in one transfer
    eval_period: int  # 0: evaluate only after the last step
    checkpoint_period: int
    clip_grad_norm: float  # 0: no clipping
    amp: bool  # bf16 autocast on CUDA
    top_k: int  # predicted triplets kept per image in evaluation
    holdout_batch: int  # holdout images per adaptive-mixing decision


@dataclass
class Components:
    """Everything one run trains with (built by ``realsynth.training.build``)."""

    settings: LoopSettings
    config_yaml: str  # saved in every checkpoint
    new_evaluator: Callable[[], SceneGraphEvaluator]
    val_loaders: Callable[[], dict[str, DataLoader]]
    data: RunData
    model: torch.nn.Module
    criterion: RelationCriterion
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: DataLoader
    device: torch.device
    adaptive: AdaptiveMixer | None = None
