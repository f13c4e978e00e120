"""StepSchedule values and the exact per-batch composition under changing shares."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realsynth.mixing.scheduled_composition import SHARE_UNITS, ScheduledComposition
from realsynth.mixing.step_schedule import StepSchedule


def test_linear_and_cosine_values_by_hand() -> None:
    linear = StepSchedule.linear(0.2, 1.0, 10, 20)
    assert linear.values(np.array([0, 10, 15, 20, 99])).tolist() == pytest.approx(
        [0.2, 0.2, 0.6, 1.0, 1.0]
    )
    cosine = StepSchedule.cosine(1.0, 0.0, 0, 4)
    # 1 - (1 - cos(pi * s / 4)) / 2 at s = 0..4: 1, 0.8536, 0.5, 0.1464, 0
    assert cosine.values(np.arange(5)).tolist() == pytest.approx(
        [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 - math.cos(math.pi / 4)) / 2, 0.0]
    )
    jump = StepSchedule.linear(0.3, 0.9, 5, 5)
    assert jump.values(np.array([4, 5, 6])).tolist() == [0.3, 0.9, 0.9]
    assert (linear.last_change_step, cosine.last_change_step) == (20, 4)


def test_steps_and_pretrain_finetune() -> None:
    steps = StepSchedule.steps([[3, 0.5], [8, 0.0]], before=0.7)
    assert steps.values(np.array([0, 2, 3, 7, 8, 100])).tolist() == [0.7, 0.7, 0.5, 0.5, 0.0, 0.0]
    assert steps.last_change_step == 8 and steps.extremes() == (0.0, 0.7)
    preset = StepSchedule.pretrain_finetune(100, 0.1, 1.0)
    assert preset.values(np.array([0, 99, 100, 5000])).tolist() == [0.1, 0.1, 1.0, 1.0]
    assert preset.describe() == "pretrain_finetune 0.1 for 100 steps, then 1"


def test_affine_keeps_the_kind_and_maps_every_value() -> None:
    real = StepSchedule.cosine(0.2, 0.8, 0, 10)
    synthetic = real.affine(1.0, -1.0)
    s = np.arange(12)
    assert (real.values(s) + synthetic.values(s)).tolist() == pytest.approx([1.0] * 12)
    assert synthetic.definition()["start_value"] == pytest.approx(0.8)
    half = StepSchedule.steps([[4, 0.6]], before=0.2).affine(0.0, 0.5)
    assert half.values(np.array([0, 4])).tolist() == [0.1, 0.3]


def test_constant_and_flat_schedules_are_constant() -> None:
    assert StepSchedule.constant(0.4).is_constant
    assert StepSchedule.linear(0.5, 0.5, 0, 100).is_constant
    assert not StepSchedule.steps([[10, 0.5]], before=0.4).is_constant
    assert StepSchedule.constant(0.4).last_change_step == 0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: StepSchedule.steps([[5, 0.1], [5, 0.2]], 0.0), r"breakpoints\[1\]: steps must"),
        (lambda: StepSchedule.steps([[2.5, 0.1]], 0.0), r"breakpoints\[0\]: step must be an"),
        (lambda: StepSchedule.steps([[1, 0.1, 3]], 0.0), r"breakpoints\[0\] must be \[step, va"),
        (lambda: StepSchedule.steps([], 0.0), "at least one"),
        (lambda: StepSchedule.linear(0.1, 0.2, 10, 5), r"end_step \(5\) must be >= start_step"),
        (lambda: StepSchedule.cosine(0.1, float("nan"), 0, 5), "must be finite"),
        (lambda: StepSchedule.pretrain_finetune(0, 0.0, 1.0), "pretrain_steps must be"),
    ],
)
def test_bad_schedules_say_what_is_wrong(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


@st.composite
def schedules(draw: st.DrawFn) -> tuple[list[StepSchedule], int, int]:
    """2-4 sources of random piecewise schedules (steps, ramps, constants, zero shares)."""
    k = draw(st.integers(2, 4))
    value = st.sampled_from([0.0, 0.05, 0.1, 1 / 3, 0.5, 0.7, 1.0]) | st.floats(0.0, 1.0)
    out = []
    for _ in range(k):
        kind = draw(st.sampled_from(["constant", "steps", "linear", "cosine"]))
        if kind == "constant":
            out.append(StepSchedule.constant(draw(value)))
        elif kind == "steps":
            at = sorted(draw(st.sets(st.integers(0, 40), min_size=1, max_size=4)))
            out.append(StepSchedule.steps([[s, draw(value)] for s in at], draw(value)))
        else:
            a, b = sorted(draw(st.lists(st.integers(0, 40), min_size=2, max_size=2)))
            ramp = StepSchedule.linear if kind == "linear" else StepSchedule.cosine
            out.append(ramp(draw(value), draw(value), a, b))
    if out[0].extremes()[0] < 0.05:  # every step needs a positive total
        out[0] = StepSchedule.steps([[0, max(draw(value), 0.05)]], 0.5)
    return out, draw(st.integers(k, 24)), draw(st.integers(1, 3))


def _targets(comp: ScheduledComposition, batches: int) -> np.ndarray:
    """Running targets T_k(g) for g = 0..batches from the reported shares: float64 [G + 1, K]."""
    steps = np.arange(batches) // comp.world_size
    per_batch = comp.shares(steps) * comp.batch_size
    return np.concatenate([np.zeros((1, comp.num_sources)), np.cumsum(per_batch, axis=0)])


@settings(max_examples=60, deadline=None)
@given(case=schedules())
def test_every_batch_floor_or_ceil_and_running_error_below_one(case) -> None:
    scheds, batch_size, world = case
    comp = ScheduledComposition(scheds, batch_size, world)
    horizon = (comp.last_change + 30) * world + 400  # well past the last change
    g = np.arange(horizon + 1)
    running = comp.cumulative(g)
    target = _targets(comp, horizon)
    counts = np.diff(running, axis=0)
    per_batch = np.diff(target, axis=0)
    assert (counts.sum(axis=1) == batch_size).all()
    assert (counts >= np.floor(per_batch + 1e-9)).all()
    assert (counts <= np.ceil(per_batch - 1e-9)).all()
    assert np.abs(running - target).max() < 1 - 1e-9
    assert (comp.counts(g[:-1]) == counts).all()  # the batch-wise query agrees


@settings(max_examples=30, deadline=None)
@given(case=schedules())
def test_shares_are_rounded_normalized_values(case) -> None:
    scheds, batch_size, world = case
    comp = ScheduledComposition(scheds, batch_size, world)
    steps = np.arange(comp.last_change + 5)
    values = np.stack([s.values(steps) for s in scheds], axis=1)
    exact = values / values.sum(axis=1, keepdims=True)
    shares = comp.shares(steps)
    assert np.allclose(shares.sum(axis=1), 1.0, atol=0)
    assert np.abs(shares - exact).max() < 1 / SHARE_UNITS
    assert ((shares * SHARE_UNITS) % 1 == 0).all()


def test_far_batches_are_exact_without_walking_there() -> None:
    """g ~ 10^12: the tables stop at the last change; what lies beyond is closed form."""
    scheds = [
        StepSchedule.linear(0.2, 0.6, 0, 500),
        StepSchedule.constant(0.3),
        StepSchedule.steps([[100, 0.1]], 0.2),
    ]
    comp = ScheduledComposition(scheds, 16, 2)
    far = np.arange(10**12, 10**12 + 200)
    running = comp.cumulative(far)
    # Exact integer targets: T(g) = T(change) + (g - change) * final share * batch size.
    head = comp.change_batches
    units = comp.shares(np.array([comp.last_change]))[0] * SHARE_UNITS
    base = comp.cumulative(np.array([head]))  # within one of T(head)
    target_head = _targets(comp, head)[-1]
    target = target_head + (far[:, None] - head) * units[None, :] * 16 / SHARE_UNITS
    assert np.abs(running - target).max() < 1
    assert np.abs(base - target_head).max() < 1
    assert (np.diff(running, axis=0).sum(axis=1) == 16).all()


def test_two_sources_round_the_running_target() -> None:
    comp = ScheduledComposition(
        [StepSchedule.linear(0.0, 1.0, 0, 4), StepSchedule.linear(1.0, 0.0, 0, 4)], 4
    )
    # Shares of source 0 per step: 0, 1/4, 1/2, 3/4, 1 -> per batch 0, 1, 2, 3, 4 items.
    assert comp.counts(np.arange(6))[:, 0].tolist() == [0, 1, 2, 3, 4, 4]


def test_values_summing_to_zero_name_the_step() -> None:
    with pytest.raises(ValueError, match="sum to 0.0 at step 3"):
        ScheduledComposition(
            [StepSchedule.steps([[3, 0.0], [4, 1.0]], 1.0), StepSchedule.constant(0.0)], 4
        )


def test_more_than_six_changing_sources_is_refused() -> None:
    scheds = [StepSchedule.linear(0.1, 0.2, 0, 10)] * 7
    with pytest.raises(ValueError, match="up to 6 sources"):
        ScheduledComposition(scheds, 16)
