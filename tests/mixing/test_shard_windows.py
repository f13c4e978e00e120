"""The shard-window stream of a sharded source, alone and inside MixedBatchSampler: every pass a
permutation, items of a window from at most ``window`` shards, and everything the sampler
promises (exact composition, bit-exact resume, disjoint ranks) unchanged."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from realsynth.mixing.sampler import MixedBatchSampler
from realsynth.mixing.shard_windows import ShardWindowStream


@st.composite
def layouts(draw: st.DrawFn) -> dict:
    shards = draw(st.lists(st.integers(1, 12), min_size=1, max_size=14))
    return {
        "shard_sizes": shards,
        "window": draw(st.integers(1, 5)),
        "seed": draw(st.integers(0, 2**31)),
        "stream_id": draw(st.integers(0, 3)),
    }


@settings(max_examples=60, deadline=None)
@given(layout=layouts(), passes=st.integers(1, 3))
def test_every_pass_is_a_permutation_and_windows_keep_to_few_shards(layout: dict, passes: int):
    stream = ShardWindowStream(**layout)
    n, window = stream.size, layout["window"]
    for p in range(passes):
        items = stream.take(p * n, n)
        assert sorted(items.tolist()) == list(range(n))
        shards = stream.shard_of(items)
        # The pass walks its windows one after the other: consecutive runs of whole shards.
        boundaries = np.flatnonzero(np.diff(shards) != 0)
        runs = np.split(shards, boundaries + 1)
        seen: set[int] = set()
        order = []
        for run in runs:
            if run[0] not in seen:
                seen.add(int(run[0]))
                order.append(int(run[0]))
        for w in range(0, len(order), window):
            members = set(order[w : w + window])
            span = np.isin(shards, list(members))
            first, last = np.flatnonzero(span)[[0, -1]]
            assert span[first : last + 1].all()  # a window's items are contiguous in the pass
            assert len(members) <= window


@settings(max_examples=40, deadline=None)
@given(layout=layouts(), positions=st.lists(st.integers(0, 400), min_size=1, max_size=50))
def test_any_position_is_computed_directly(layout: dict, positions: list[int]):
    stream = ShardWindowStream(**layout)
    full = stream.take(0, 401)
    assert stream.at(np.asarray(positions)).tolist() == full[positions].tolist()
    fresh = ShardWindowStream(**layout)  # no state: a new stream agrees at any position
    assert fresh.at(np.asarray(positions[::-1])).tolist() == full[positions[::-1]].tolist()


def test_passes_and_seeds_reshuffle_shards_and_items():
    stream = ShardWindowStream([5] * 20, window=4, seed=1, stream_id=0)
    first, second = stream.take(0, 100), stream.take(100, 100)
    assert first.tolist() != second.tolist()
    other = ShardWindowStream([5] * 20, window=4, seed=2, stream_id=0)
    assert other.take(0, 100).tolist() != first.tolist()
    # The shard order changes between passes, not only the items inside windows.
    assert stream.shard_of(first[:20]).tolist() != stream.shard_of(second[:20]).tolist()


@st.composite
def sharded_mixes(draw: st.DrawFn) -> dict:
    real = draw(st.integers(1, 40))
    shards = draw(st.lists(st.integers(1, 9), min_size=1, max_size=10))
    share = draw(st.integers(1, 9)) / 10
    return {
        "sizes": [real, sum(shards)],
        "ratios": [share, 1 - share],
        "batch_size": 2 + draw(st.integers(0, 14)),
        "seed": draw(st.integers(0, 2**31)),
        "shard_sizes": [None, np.asarray(shards)],
        "shard_window": draw(st.integers(1, 4)),
    }


@settings(max_examples=30, deadline=None)
@given(mix=sharded_mixes())
def test_a_sharded_source_keeps_the_exact_composition(mix: dict):
    sampler = MixedBatchSampler(**mix, num_batches=25)
    real_per_batch = mix["ratios"][0] * mix["batch_size"]
    running = 0.0
    for g, batch in enumerate(sampler, start=1):
        ids = np.asarray(batch) >= mix["sizes"][0]
        assert len(batch) == mix["batch_size"] and (np.diff(ids.astype(int)) >= 0).all()
        running += int((~ids).sum())
        assert abs(running - real_per_batch * g) < 1


@settings(max_examples=25, deadline=None)
@given(mix=sharded_mixes(), cut=st.integers(0, 50))
def test_a_sharded_source_resumes_bit_exactly(mix: dict, cut: int):
    def epochs(sampler):
        for e in range(2):
            sampler.set_epoch(e)
            yield sampler

    full = [b for s in epochs(MixedBatchSampler(**mix, num_batches=25)) for b in s]
    first = MixedBatchSampler(**mix, num_batches=25)
    head = list(itertools.islice(itertools.chain.from_iterable(epochs(first)), cut))
    resumed = MixedBatchSampler(**mix, num_batches=25)
    resumed.load_state_dict(first.state_dict())
    tail = []
    for e in range(resumed.epoch, 2):
        resumed.set_epoch(e)
        tail.extend(resumed)
    assert head + tail == full


@settings(max_examples=25, deadline=None)
@given(mix=sharded_mixes(), world=st.integers(2, 4))
def test_ddp_ranks_of_a_sharded_source_split_the_single_process_stream(mix: dict, world: int):
    single = list(MixedBatchSampler(**mix, num_batches=6 * world))
    for r in range(world):
        rank = list(MixedBatchSampler(**mix, num_batches=6, rank=r, world_size=world))
        assert rank == single[r::world]
    # Within one pass of the sharded source, ranks never share an item.
    synthetic = [i for b in single for i in b if i >= mix["sizes"][0]][: mix["sizes"][1]]
    assert len(set(synthetic)) == len(synthetic)


def test_without_shards_the_stream_is_the_one_it_always_was():
    plain = MixedBatchSampler([30, 90], [0.5, 0.5], 8, seed=3, num_batches=10)
    unsharded = MixedBatchSampler(
        [30, 90], [0.5, 0.5], 8, seed=3, num_batches=10, shard_sizes=[None, None]
    )
    assert list(plain) == list(unsharded)
    sharded = MixedBatchSampler(
        [30, 90], [0.5, 0.5], 8, seed=3, num_batches=10, shard_sizes=[None, [30, 30, 30]]
    )
    fresh = MixedBatchSampler([30, 90], [0.5, 0.5], 8, seed=3, num_batches=10)
    assert [b[:4] for b in sharded] == [b[:4] for b in fresh]  # the real source's stream


def test_a_hundred_million_images_in_shards_start_in_flat_memory():
    # 10^8 images in 10^5 shards of 1000 (only the counts matter to the sampler).
    peaks = []
    for shards in (1_000, 100_000):
        counts = np.full(shards, 1000, dtype=np.int64)
        tracemalloc.start()
        sampler = MixedBatchSampler(
            [10_000, int(counts.sum())],
            [0.7, 0.3],
            32,
            seed=0,
            num_batches=64,
            shard_sizes=[None, counts],
            shard_window=8,
        )
        first = next(iter(sampler))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        synthetic = np.asarray(first[22:]) - 10_000
        assert (synthetic >= 0).all() and len(set((synthetic // 1000).tolist())) <= 8
    # The per-pass layout is O(shards): a few MB at 10^5 shards, nothing per image.
    assert peaks[1] < 16 * 2**20
