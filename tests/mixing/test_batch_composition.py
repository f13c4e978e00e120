"""Per-batch composition: floor/ceil per batch, running totals within one, exact sums."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realsynth.mixing import batch_composition as composition
from realsynth.mixing.batch_composition import CompositionSchedule, exact_shares

weights_st = st.lists(st.integers(0, 40), min_size=1, max_size=6).filter(lambda w: sum(w) > 0)


def _check(schedule: CompositionSchedule, shares: list[Fraction], batches: int) -> None:
    g = np.arange(batches + 1)
    cum = schedule.cumulative(g)
    per = np.diff(cum, axis=0)
    target = np.array([[float(s) * schedule.batch_size * x for s in shares] for x in g])
    floor = np.array([int(s * schedule.batch_size) for s in shares])
    assert (per.sum(axis=1) == schedule.batch_size).all()
    assert ((per == floor) | (per == floor + 1)).all()
    assert (np.abs(cum - target) < 1).all()
    assert np.array_equal(schedule.counts(g[:-1]), per)


@settings(max_examples=60, deadline=None)
@given(weights=weights_st, extra=st.integers(0, 60))
def test_schedule_properties(weights: list[int], extra: int) -> None:
    shares = exact_shares([w / sum(weights) for w in weights])
    batch = len(weights) + extra
    _check(CompositionSchedule(shares, batch), shares, 300)


@settings(max_examples=20, deadline=None)
@given(weights=st.lists(st.integers(1, 30), min_size=3, max_size=6), extra=st.integers(0, 40))
def test_stepping_path_equals_table_path(weights: list[int], extra: int) -> None:
    shares = exact_shares([w / sum(weights) for w in weights])
    batch = len(weights) + extra
    table = CompositionSchedule(shares, batch)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(composition, "_MAX_TABLE_PERIOD", 0)
        stepping = CompositionSchedule(shares, batch)
    g = np.array([0, 5, 3, 250, 249, 1000, 7, 7])  # out of order: the cursor must restart
    assert np.array_equal(table.cumulative(g), stepping.cumulative(g))


def test_hand_computed_patterns() -> None:
    # 0.7 * 20 = 14 exactly: every batch 14 + 6.
    s = CompositionSchedule(exact_shares([0.7, 0.3]), 20)
    assert s.counts(np.arange(4)).tolist() == [[14, 6]] * 4
    # 0.7 * 32 = 22.4: extras at round(0.4 g) -> 22, 23, 22, 23, 22 per period of 5.
    s = CompositionSchedule(exact_shares([0.7, 0.3]), 32)
    assert s.period == 5
    assert s.counts(np.arange(10))[:, 0].tolist() == [22, 23, 22, 23, 22] * 2
    # A share below one per batch: 0.05 * 10 = 0.5 -> every other batch.
    s = CompositionSchedule(exact_shares([0.95, 0.05]), 10)
    assert s.counts(np.arange(6))[:, 1].tolist() == [0, 1, 0, 1, 0, 1]


def test_three_sources_period_sums_exactly() -> None:
    shares = exact_shares([0.5, 0.3, 0.2])
    s = CompositionSchedule(shares, 7)  # 3.5, 2.1, 1.4 per batch
    assert s.period == 10
    assert s.cumulative(np.array([10, 20]))[:, :].tolist() == [[35, 21, 14], [70, 42, 28]]


def test_exact_shares_reads_decimal_ratios() -> None:
    assert exact_shares([0.7, 0.3]) == [Fraction(7, 10), Fraction(3, 10)]
    # Within the 1e-6 tolerance, rescaled to sum to exactly one.
    assert sum(exact_shares([0.3333333, 0.6666667])) == 1
    tiny = exact_shares([1e-9, 1 - 1e-9])
    assert tiny[0] > 0


@pytest.mark.parametrize(
    ("weights", "batch"),
    # Each of these made earliest-deadline-first (the quota method) run out of eligible sources.
    [([15, 15, 19, 19, 19, 19], 21), ([6, 15, 17, 22], 79), ([46, 42, 58, 0, 0, 31, 9], 17)],
)
def test_pfair_schedule_holds_where_earliest_deadline_first_fails(weights, batch) -> None:
    shares = exact_shares([w / sum(weights) for w in weights])
    schedule = CompositionSchedule(shares, batch)
    _check(schedule, shares, 2 * schedule.period + 3)


def test_pd2_group_deadline_is_the_definitions() -> None:
    # Anderson & Srinivasan: the earliest t >= d(T_i) with t = d(T_k) and b(T_k) = 0, or
    # t + 1 = d(T_k) and T_k's window has 3 slots, for some k >= i (heavy tasks only).
    import math

    for denom in range(3, 30):
        for rem in range((denom + 1) // 2, denom):
            w = Fraction(rem, denom)

            def d(j, w=w):
                return math.ceil(j / w)

            def window(j, w=w):
                return d(j) - math.floor((j - 1) / w)

            for i in range(1, 2 * denom):
                t = d(i)
                while not any(
                    (t == d(k) and d(k) == j / w) or (t + 1 == d(k) and window(k) == 3)
                    for k in range(i, i + denom)
                    for j in [k]
                ):
                    t += 1
                assert composition._pd2_key(i, rem, denom)[2] == -t, (rem, denom, i)
