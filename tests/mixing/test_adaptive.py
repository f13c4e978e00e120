"""The arithmetic of adaptive mixing: the projection, the update, smoothing, weights, state."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realsynth.mixing.adaptive import AdaptiveMixer, project_shares
from realsynth.mixing.holdout import holdout_items
from realsynth.mixing.sampler import MixedBatchSampler


def test_projection_by_hand() -> None:
    low, high = np.array([0.05, 0.05]), np.array([0.95, 0.95])
    np.testing.assert_allclose(project_shares(np.array([0.9, 0.1]), low, high), [0.9, 0.1])
    np.testing.assert_allclose(project_shares(np.array([1e-9, 3.0]), low, high), [0.05, 0.95])
    # Source 0 clipped at 0.5; the others share the rest in their ratio 3 : 1.
    three = project_shares(np.array([0.6, 0.3, 0.1]), np.zeros(3), np.array([0.5, 1, 1]))
    np.testing.assert_allclose(three, [0.5, 0.375, 0.125], atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(1e-6, 1e6), min_size=2, max_size=5),
    st.lists(st.floats(0.0, 0.2), min_size=5, max_size=5),
)
def test_projection_sums_to_one_within_bounds_and_keeps_the_order(shares, lows) -> None:
    k = len(shares)
    low = np.array(lows[:k])
    high = np.minimum(1.0, low + 0.5 + 0.5 / k)
    out = project_shares(np.array(shares), low, high)
    assert out.sum() == pytest.approx(1.0, abs=1e-12)
    assert (out >= low - 1e-12).all() and (out <= high + 1e-12).all()
    free = (out > low + 1e-9) & (out < high - 1e-9)
    if free.sum() >= 2:  # unclipped shares keep their ratios
        ratio = out[free] / np.array(shares)[free]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)


def _mixer(**kwargs) -> AdaptiveMixer:
    settings = dict(
        names=["real", "synthetic"],
        kinds=["real", "synthetic"],
        ratios=[0.7, 0.3],
        weights=[1.0, 0.5],
        interval=10,
        step_size=1.0,
        smoothing=0.0,
        min_ratios=[0.05, 0.05],
        max_ratios=[0.95, 0.95],
    )
    return AdaptiveMixer(**{**settings, **kwargs})


def test_one_exponentiated_gradient_step_by_hand() -> None:
    decision = _mixer().decide(10, [0.5, -0.5])
    a, b = 0.7 * math.exp(0.5), 0.3 * math.exp(-0.5)
    assert decision.step == 20  # decided after step 10, in force one interval later
    assert decision.ratios == pytest.approx([a / (a + b), b / (a + b)], abs=1e-12)
    assert decision.weights == [1.0, 0.5]


def test_smoothing_is_an_ema_and_an_absent_source_keeps_its_alignment() -> None:
    mixer = _mixer(smoothing=0.75)
    mixer.decide(10, [0.4, 0.8])
    assert mixer.smoothed == [0.4, 0.8]  # the first measurement starts the average
    second = mixer.decide(20, [0.0, None])
    assert second.smoothed == pytest.approx([0.3, 0.8])
    assert second.alignment == [0.0, None]


def test_adapted_weights_move_synthetic_sources_only_and_are_clipped() -> None:
    mixer = _mixer(adapt_weights=True, min_weight=0.2, max_weight=0.6)
    first = mixer.decide(10, [0.3, 1.0])
    assert first.weights == [1.0, pytest.approx(0.6)]  # 0.5 * e = 1.36, clipped to 0.6
    second = mixer.decide(20, [0.3, -3.0])
    assert second.weights == [1.0, pytest.approx(0.2)]  # 0.6 * e^-3, clipped to 0.2
    # Pushed into the sampler, the batches of each step get the weights decided for it.
    sampler = MixedBatchSampler(
        [30, 30], [0.7, 0.3], 4, share_horizon=mixer.initial_horizon, loss_weights=[1.0, 0.5]
    )
    for decision in (first, second):
        sampler.change_mix(decision.step, horizon=decision.step + 10, weights=decision.weights)
    assert sampler.weights_at(19) == [1.0, 0.5]
    assert sampler.weights_at(20) == [1.0, pytest.approx(0.6)]
    assert sampler.weights_at(35) == [1.0, pytest.approx(0.2)]


def test_state_round_trip_continues_the_same_trajectory() -> None:
    rng = np.random.default_rng(0)
    measured = rng.uniform(-1, 1, size=(8, 2)).tolist()
    whole = _mixer(smoothing=0.5, adapt_weights=True)
    trajectory = [whole.decide(10 * (i + 1), m).ratios for i, m in enumerate(measured)]
    first = _mixer(smoothing=0.5, adapt_weights=True)
    for i, m in enumerate(measured[:3]):
        first.decide(10 * (i + 1), m)
    resumed = _mixer(smoothing=0.5, adapt_weights=True)
    resumed.load_state_dict(first.state_dict())
    rest = [resumed.decide(10 * (i + 4), m).ratios for i, m in enumerate(measured[3:])]
    assert rest == trajectory[3:]
    assert resumed.weights.tolist() == whole.weights.tolist()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="minimums sum to 1.2"):
        _mixer(min_ratios=[0.6, 0.6])
    with pytest.raises(ValueError, match="smoothing in \\[0, 1\\)"):
        _mixer(smoothing=1.0)
    with pytest.raises(ValueError, match="adaptive state for 3 sources"):
        _mixer().load_state_dict({"ratios": [0.2, 0.3, 0.5]})


def test_holdout_batches_cycle_through_the_holdout_and_split_over_ranks() -> None:
    assert holdout_items(10, 0, 4, 0, 1) == [0, 1, 2, 3]
    assert holdout_items(10, 2, 4, 0, 1) == [8, 9, 0, 1]  # the third decision wraps around
    # Two ranks split the same global holdout batch.
    both = holdout_items(10, 1, 4, 0, 2) + holdout_items(10, 1, 4, 1, 2)
    assert sorted(both) == [4, 5, 6, 7]


def test_a_decision_skipped_with_its_batch_is_taken_after_the_next_one() -> None:
    mixer = _mixer()
    assert not mixer.due(9) and mixer.due(10)
    mixer.decide(mixer.next_decision, [0.1, 0.2])
    assert mixer.next_decision == 20
    assert not mixer.due(19) and mixer.due(21)  # the batch of step 20 was skipped


def test_resume_with_another_interval_or_a_start_outside_the_bounds_is_refused() -> None:
    saved = _mixer().state_dict()
    with pytest.raises(ValueError, match="decision interval of 10 steps, this run has 5"):
        _mixer(interval=5).load_state_dict(saved)
    with pytest.raises(ValueError, match="real 0.7 not in \\[0.8, 0.95\\]"):
        _mixer(min_ratios=[0.8, 0.05])
