"""Keyed permutations and draws: bijective per pass, keyed, stateless, any size."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realsynth.mixing.permutation import KeyedStream, splitmix64


def test_splitmix64_matches_reference_first_output() -> None:
    # Reference SplitMix64 seeded with 0 yields 0xE220A8397B1DCDAF first.
    out = splitmix64(np.zeros(1, dtype=np.uint64))
    assert int(out[0]) == 0xE220A8397B1DCDAF


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 300), seed=st.integers(0, 2**32), stream_id=st.integers(0, 5))
def test_every_pass_is_a_permutation(size: int, seed: int, stream_id: int) -> None:
    stream = KeyedStream(size, seed=seed, stream_id=stream_id, replacement=False)
    values = stream.take(0, 3 * size)
    for p in range(3):
        assert sorted(values[p * size : (p + 1) * size].tolist()) == list(range(size))


def test_passes_sources_and_seeds_give_different_orders() -> None:
    base = KeyedStream(1000, seed=1, stream_id=0, replacement=False).take(0, 2000)
    other_source = KeyedStream(1000, seed=1, stream_id=1, replacement=False).take(0, 1000)
    other_seed = KeyedStream(1000, seed=2, stream_id=0, replacement=False).take(0, 1000)
    assert not np.array_equal(base[:1000], base[1000:])
    assert not np.array_equal(base[:1000], other_source)
    assert not np.array_equal(base[:1000], other_seed)
    # A shuffle, not a near-identity: few fixed points and no long sorted runs.
    assert int((base[:1000] == np.arange(1000)).sum()) < 10
    assert int((np.diff(base[:1000]) == 1).sum()) < 20


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(1, 5000),
    replacement=st.booleans(),
    positions=st.lists(st.integers(0, 10**7), min_size=1, max_size=50),
)
def test_at_equals_take_and_is_deterministic(
    size: int, replacement: bool, positions: list[int]
) -> None:
    a = KeyedStream(size, seed=7, stream_id=3, replacement=replacement)
    b = KeyedStream(size, seed=7, stream_id=3, replacement=replacement)
    got = a.at(np.asarray(positions, dtype=np.int64))
    assert got.tolist() == [int(b.take(p, 1)[0]) for p in positions]
    assert ((got >= 0) & (got < size)).all()


def test_billion_item_source_without_materializing() -> None:
    size = 10**9
    tracemalloc.start()
    stream = KeyedStream(size, seed=0, stream_id=0, replacement=False)
    values = stream.take(3 * size - 50_000, 100_000)  # straddles passes 2 and 3
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 2**20  # a materialized permutation would need 8 GB
    assert ((values >= 0) & (values < size)).all()
    assert len(set(values[:50_000].tolist())) == 50_000
    assert len(set(values[50_000:].tolist())) == 50_000


def test_draws_with_replacement_are_uniform() -> None:
    draws = KeyedStream(10, seed=3, stream_id=1, replacement=True).take(0, 100_000)
    counts = np.bincount(draws, minlength=10)
    # Binomial std is ~95 per cell; 500 is over 5 sigma.
    assert np.abs(counts - 10_000).max() < 500


def test_invalid_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="KeyedStream size must be in"):
        KeyedStream(0, seed=0, stream_id=0, replacement=False)
