"""ShareHistory and the adaptive sampler: shares changed online stay exact at every batch."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realsynth.mixing.sampler import MixedBatchSampler
from realsynth.mixing.share_history import ShareHistory


@st.composite
def online_changes(draw: st.DrawFn) -> dict:
    k = draw(st.integers(2, 4))
    batch = k + draw(st.integers(0, 13))
    world = draw(st.integers(1, 3))
    first = [draw(st.integers(1, 10)) for _ in range(k)]
    steps = sorted(draw(st.sets(st.integers(1, 40), max_size=6)))
    shares = [[draw(st.floats(0.0, 1.0)) + 1e-3 for _ in range(k)] for _ in steps]
    return {"initial": first, "batch": batch, "world": world, "changes": list(zip(steps, shares))}


def _history(case: dict) -> tuple[ShareHistory, list[Fraction]]:
    initial = [Fraction(v, sum(case["initial"])) for v in case["initial"]]
    history = ShareHistory(initial, case["batch"], case["world"])
    for step, shares in case["changes"]:
        history.change(step, shares)
    return history, initial


@settings(max_examples=150, deadline=None)
@given(online_changes())
def test_every_batch_is_exact_for_the_shares_in_force(case: dict) -> None:
    history, _ = _history(case)
    batch, world = case["batch"], case["world"]
    g = np.arange(60 * world)
    counts = history.counts(g)
    assert (counts.sum(axis=1) == batch).all() and (counts >= 0).all()
    shares = history.shares(g // world)  # batch g is drawn for step g // world
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-12)
    expected = shares * batch
    # floor or ceil of share * batch_size in every batch ...
    assert (counts >= np.floor(expected - 1e-9)).all()
    assert (counts <= np.ceil(expected + 1e-9)).all()
    # ... and the running count strictly within one item of the running target.
    running = np.cumsum(counts, axis=0)
    target = np.cumsum(expected, axis=0)
    assert (np.abs(running - target) < 1 - 1e-9).all()


@settings(max_examples=60, deadline=None)
@given(online_changes())
def test_state_is_the_list_of_changes_and_replays_exactly(case: dict) -> None:
    history, initial = _history(case)
    state = history.state_dict()
    assert len(state["steps"]) == len(state["values"]) <= 1 + len(case["changes"])
    replayed = ShareHistory(initial, case["batch"], case["world"])
    replayed.load_state_dict(state)
    g = np.arange(80)
    np.testing.assert_array_equal(replayed.counts(g), history.counts(g))


def test_two_sources_follow_the_rounded_running_target_by_hand() -> None:
    # Batch 4, real share 1/2 for steps 0-1, then 3/4: targets 2, 4, 7, 10, ... items.
    history = ShareHistory([Fraction(1, 2), Fraction(1, 2)], 4)
    assert history.change(2, [0.75, 0.25])
    assert not history.change(3, [3.0, 1.0])  # the same shares again: no new change
    assert history.counts(np.arange(5)).tolist() == [[2, 2], [2, 2], [3, 1], [3, 1], [3, 1]]
    assert history.state_dict() == {
        "steps": [0, 2],
        "values": [[32768, 32768], [49152, 16384]],
        "batch_size": 4,
    }


def test_three_sources_take_whole_items_per_batch_after_the_first_change() -> None:
    history = ShareHistory([Fraction(1, 3)] * 3, 5)
    history.change(1, [0.5, 0.3, 0.2])  # 2.5 / 1.5 / 1.0 items: largest remainder, ties first
    assert history.shares(np.array([1]))[0].tolist() == [0.6, 0.2, 0.2]
    assert history.counts(np.array([1, 2])).tolist() == [[3, 1, 1], [3, 1, 1]]


def test_three_sources_replay_only_at_the_same_per_rank_batch() -> None:
    history = ShareHistory([Fraction(1, 3)] * 3, 8)
    history.change(2, [0.5, 0.3, 0.2])
    halved = ShareHistory([Fraction(1, 3)] * 3, 4, world_size=2)
    with pytest.raises(ValueError, match="whole items per batch of 8 per process; this run has 4"):
        halved.load_state_dict(history.state_dict())
    two = ShareHistory([Fraction(1, 2)] * 2, 8)
    two.change(2, [0.7, 0.3])
    other = ShareHistory([Fraction(1, 2)] * 2, 4, world_size=2)
    other.load_state_dict(two.state_dict())  # two sources: shares, not counts; any world size
    # Global batches of steps 2, 3: 8 items each, split over two ranks of 4.
    both = other.counts(np.arange(4, 8)).reshape(2, 2, 2).sum(axis=1)
    assert both.sum(axis=1).tolist() == [8, 8]
    assert (np.abs(both[:, 0] - 5.6) < 1).all()


def test_changes_are_refused_before_the_last_one_and_for_bad_shares() -> None:
    history = ShareHistory([Fraction(1, 2)] * 2, 4)
    history.change(5, [0.6, 0.4])
    with pytest.raises(ValueError, match="step 4 is before the last one"):
        history.change(4, [0.5, 0.5])
    with pytest.raises(ValueError, match="finite, >= 0"):
        history.change(6, [math.nan, 1.0])


def _adaptive(**kwargs) -> MixedBatchSampler:
    return MixedBatchSampler([30, 50], [0.5, 0.5], 4, seed=1, share_horizon=4, **kwargs)


def test_adaptive_sampler_draws_up_to_the_horizon_and_no_further() -> None:
    sampler = _adaptive()
    it = iter(sampler)
    first = [next(it) for _ in range(4)]
    with pytest.raises(RuntimeError, match="batch of step 4 was asked for before"):
        next(it)
    plain = list(MixedBatchSampler([30, 50], [0.5, 0.5], 4, seed=1))
    assert first == plain[:4]  # until the first change: the fixed mix's stream


def test_a_resumed_adaptive_sampler_continues_the_stream() -> None:
    sampler = _adaptive()
    sampler.change_shares(4, [0.9, 0.1], horizon=7)
    stream = _take(sampler, 7)
    assert [sum(i < 30 for i in b) for b in stream] == [2, 2, 2, 2, 4, 3, 4]

    again = _adaptive()
    again.change_shares(4, [0.9, 0.1], horizon=7)
    it = iter(again)
    [next(it) for _ in range(5)]
    state = again.state_dict()
    assert state["share_history"]["values"] == [[32768, 32768], [58982, 6554]]
    resumed = _adaptive()
    resumed.load_share_history(state)
    resumed.load_state_dict(state)
    assert _take(resumed, 2) == stream[5:]


def _take(sampler: MixedBatchSampler, n: int) -> list[list[int]]:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_change_shares_is_refused_inside_the_drawn_window() -> None:
    sampler = _adaptive()
    with pytest.raises(ValueError, match="step 3 must be >= the horizon 4"):
        sampler.change_shares(3, [0.9, 0.1], horizon=8)
    with pytest.raises(ValueError, match="adaptive shares .* need constant ratios"):
        from realsynth.mixing.step_schedule import StepSchedule

        MixedBatchSampler([3, 3], [StepSchedule.linear(0.2, 0.8, 0, 4), 0.5], 2, share_horizon=2)
