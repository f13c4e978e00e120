"""The learning-rate schedules: warmup, then cosine, constant, or detectron2's multi-step."""

from __future__ import annotations

import pytest
import torch

from realsynth.config import ConfigError, load_config
from realsynth.training.build import build_scheduler


def rates(overrides: list[str], steps: int) -> list[float]:
    """The learning rate of each of ``steps`` optimizer steps, as the trainer applies them."""
    cfg = load_config(None, ["SOLVER.BASE_LR=1.0", *overrides])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(cfg, optimizer)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_step_schedule_drops_by_gamma_at_each_step_after_warmup():
    seen = rates(
        [
            "SOLVER.MAX_ITER=10",
            "SOLVER.WARMUP_ITERS=2",
            "SOLVER.LR_SCHEDULE=step",
            "SOLVER.STEPS=[4,7]",
            "SOLVER.GAMMA=0.5",
        ],
        10,
    )
    assert seen == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25])


def test_constant_and_cosine_are_unchanged():
    assert rates(["SOLVER.WARMUP_ITERS=1", "SOLVER.LR_SCHEDULE=constant"], 4) == [1.0] * 4
    cosine = rates(["SOLVER.MAX_ITER=5", "SOLVER.WARMUP_ITERS=1"], 5)
    assert cosine == pytest.approx([1.0, 1.0, 0.8535534, 0.5, 0.1464466])


@pytest.mark.parametrize(
    "overrides",
    [
        ["SOLVER.LR_SCHEDULE=step"],
        ["SOLVER.STEPS=[100]"],
        ["SOLVER.LR_SCHEDULE=step", "SOLVER.STEPS=[300,200]"],
        ["SOLVER.LR_SCHEDULE=step", "SOLVER.STEPS=[5000]"],
        ["SOLVER.LR_SCHEDULE=step", "SOLVER.STEPS=[10]", "SOLVER.GAMMA=0"],
    ],
)
def test_bad_step_settings_are_one_line_naming_the_key(overrides):
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides)
    message = str(exc.value)
    assert "\n" not in message and ("SOLVER.STEPS" in message or "SOLVER.GAMMA" in message)
