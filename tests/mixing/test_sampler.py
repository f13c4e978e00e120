"""MixedBatchSampler: composition, passes, determinism, resume, DDP, settings."""

from __future__ import annotations

import itertools
import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributed.checkpoint.stateful import Stateful

from realsynth.mixing.sampler import MixedBatchSampler


@st.composite
def mixes(draw: st.DrawFn) -> dict:
    k = draw(st.integers(1, 4))
    weights = draw(st.lists(st.integers(0, 10), min_size=k, max_size=k))
    weights[0] = draw(st.integers(1, 10))  # the epoch source needs a positive share
    sizes = [draw(st.integers(1, 60)) for _ in range(k)]
    return {
        "sizes": sizes,
        "ratios": [w / sum(weights) for w in weights],
        "batch_size": k + draw(st.integers(0, 24)),
        "seed": draw(st.integers(0, 2**31)),
    }


def _source_ids(batch: list[int], sizes: list[int]) -> np.ndarray:
    return np.searchsorted(np.cumsum(sizes), np.asarray(batch), side="right")


def _stream(sampler: MixedBatchSampler, epochs: int) -> list[list[int]]:
    out: list[list[int]] = []
    for e in range(epochs):
        sampler.set_epoch(e)
        out.extend(sampler)
    return out


def test_note_example_every_batch_is_14_real_then_6_synthetic() -> None:
    sampler = MixedBatchSampler([100, 1000], [0.7, 0.3], 20, seed=0)
    batches = list(sampler)
    assert len(sampler) == len(batches) == math.ceil(100 / 14)
    for batch in batches:
        assert len(batch) == 20
        assert all(i < 100 for i in batch[:14]) and all(100 <= i < 1100 for i in batch[14:])


@settings(max_examples=40, deadline=None)
@given(mix=mixes())
def test_composition_floor_ceil_running_bound_and_order(mix: dict) -> None:
    sampler = MixedBatchSampler(**mix, num_batches=37)
    batches = _stream(sampler, 2)
    share = np.array(mix["ratios"]) * mix["batch_size"]
    running = np.zeros(len(mix["sizes"]))
    for g, batch in enumerate(batches, start=1):
        ids = _source_ids(batch, mix["sizes"])
        assert len(batch) == mix["batch_size"]
        assert (np.diff(ids) >= 0).all()  # ordered by source
        counts = np.bincount(ids, minlength=len(share))
        assert ((counts == np.floor(share + 1e-9)) | (counts == np.floor(share + 1e-9) + 1)).all()
        running += counts
        assert (np.abs(running - share * g) < 1).all()


@settings(max_examples=30, deadline=None)
@given(mix=mixes())
def test_each_pass_visits_every_item_once(mix: dict) -> None:
    batches = _stream(MixedBatchSampler(**mix, num_batches=40), 2)
    flat = np.concatenate([np.asarray(b) for b in batches])
    ids = _source_ids(flat.tolist(), mix["sizes"])
    for k, size in enumerate(mix["sizes"]):
        items = flat[ids == k]
        for p in range(len(items) // size):
            chunk = items[p * size : (p + 1) * size]
            assert sorted(chunk.tolist()) == list(range(chunk.min(), chunk.min() + size))
        rest = items[(len(items) // size) * size :]
        assert len(set(rest.tolist())) == len(rest)  # the open pass has no repeats either


@settings(max_examples=25, deadline=None)
@given(mix=mixes(), cut=st.integers(0, 60), replacement=st.booleans())
def test_resume_at_any_batch_equals_uninterrupted(mix: dict, cut: int, replacement: bool) -> None:
    kwargs = dict(mix, num_batches=30, replacement=replacement)
    full = _stream(MixedBatchSampler(**kwargs), 2)
    first = MixedBatchSampler(**kwargs)
    head = list(itertools.islice(itertools.chain.from_iterable(_lazy_epochs(first)), cut))
    state = first.state_dict()
    assert all(isinstance(v, int) for v in state.values())
    resumed = MixedBatchSampler(**kwargs)
    resumed.load_state_dict(state)
    tail: list[list[int]] = []
    for e in range(resumed.epoch, 2):
        resumed.set_epoch(e)
        tail.extend(resumed)
    assert head + tail == full
    assert MixedBatchSampler(**kwargs).batches(0, 30).tolist() == full[:30]  # deterministic


def _lazy_epochs(sampler: MixedBatchSampler):
    for e in range(2):
        sampler.set_epoch(e)
        yield sampler


@settings(max_examples=25, deadline=None)
@given(mix=mixes(), world=st.integers(1, 4))
def test_ddp_ranks_split_the_single_process_stream(mix: dict, world: int) -> None:
    per_rank = 12
    single = list(MixedBatchSampler(**mix, num_batches=per_rank * world))
    ranks = [
        list(MixedBatchSampler(**mix, num_batches=per_rank, rank=r, world_size=world))
        for r in range(world)
    ]
    assert all(len(r) == per_rank for r in ranks)
    for r, batches in enumerate(ranks):
        assert batches == single[r::world]


def test_ddp_default_epoch_and_disjoint_ranks() -> None:
    sizes, ratios = [100, 1000], [0.7, 0.3]
    ranks = [MixedBatchSampler(sizes, ratios, 20, seed=4, rank=r, world_size=3) for r in range(3)]
    # ceil(100 / 14) = 8 global batches, rounded up to 9 = 3 per rank.
    assert [len(s) for s in ranks] == [3, 3, 3]
    per_rank = [list(s) for s in ranks]
    # Global batch g is rank g % 3's batch g // 3; real stream positions follow g.
    in_order = [per_rank[g % 3][g // 3] for g in range(9)]
    real = [i for b in in_order for i in b[:14]]
    assert sorted(real[:100]) == list(range(100))  # pass 1 ends inside global batch 7
    assert len(set(real[100:])) == len(real[100:]) == 26  # pass 2 continues, no repeats
    synth = [i for b in in_order for i in b[14:]]
    assert len(synth) == len(set(synth)) == 9 * 6
    assert all(100 <= i < 1100 for i in synth)


def test_rare_source_keeps_exact_long_run_share() -> None:
    sampler = MixedBatchSampler([50, 50], [0.96, 0.04], 10, seed=1, num_batches=100)
    rare = [sum(i >= 50 for i in b) for b in sampler]
    assert set(rare) == {0, 1}
    assert sum(rare) == 40  # 0.04 * 10 * 100 exactly


def test_replacement_draws_keep_composition_and_range() -> None:
    sampler = MixedBatchSampler([5, 7], [0.5, 0.5], 8, seed=2, replacement=True, num_batches=50)
    batches = list(sampler)
    assert all(all(i < 5 for i in b[:4]) and all(5 <= i < 12 for i in b[4:]) for b in batches)
    real = [i for b in batches for i in b[:4]]
    counts = np.bincount(real, minlength=5)
    assert counts.sum() == 200 and counts.min() > 20 and counts.max() < 60
    # Independent draws: unlike a pass, the first five real picks repeat somewhere.
    firsts = [real[i : i + 5] for i in range(0, 200, 5)]
    assert any(len(set(f)) < 5 for f in firsts)


def test_billion_item_source_memory_and_first_batch() -> None:
    tracemalloc.start()
    sampler = MixedBatchSampler([100_000, 10**9], [0.7, 0.3], 32, seed=0, num_batches=64)
    first = next(iter(sampler))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 10 * 2**20
    assert all(i < 100_000 for i in first[:22]) and all(i >= 100_000 for i in first[22:])
    assert sampler.state_dict()["position"] == 1


def test_state_dict_set_epoch_and_stateful_protocol() -> None:
    sampler = MixedBatchSampler([10, 10], [0.5, 0.5], 4, seed=3)
    assert isinstance(sampler, Stateful)
    assert len(sampler) == 5
    it = iter(sampler)
    next(it), next(it)
    assert sampler.state_dict()["epoch"] == 0 and sampler.state_dict()["position"] == 2
    sampler.set_epoch(0)  # same epoch: keeps the position
    assert sampler.state_dict()["position"] == 2
    rest = list(it)
    assert len(rest) == 3 and sampler.state_dict()["epoch"] == 1
    assert sampler.state_dict()["position"] == 0
    sampler.set_epoch(5)
    assert sampler.batches(0, 1).tolist()[0] == next(iter(sampler))
    other = MixedBatchSampler([10, 10], [0.5, 0.5], 4, seed=4)
    with pytest.raises(ValueError, match="seed=3, but this sampler has seed=4"):
        other.load_state_dict(sampler.state_dict())
    with pytest.raises(ValueError, match="missing keys"):
        other.load_state_dict({"epoch": 0})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sizes": [10, 0], "ratios": [0.5, 0.5]}, r"source 1 has ratio 0.5 > 0 but no items"),
        ({"ratios": [0.6, 0.3]}, r"ratios must sum to 1 \(tolerance 1e-6\), got sum 0.9"),
        ({"ratios": [1.2, -0.2]}, r"ratios\[0\] must be in \[0, 1\], got 1.2"),
        ({"sizes": [-1, 5]}, r"sizes\[0\] must be a non-negative integer, got -1"),
        ({"batch_size": 1}, r"batch_size must be an integer >= .* \(2\), got 1"),
        ({"rank": 2, "world_size": 2}, r"rank must be in \[0, world_size\), got rank=2"),
        ({"num_batches": 0}, r"num_batches must be >= 1 or None, got 0"),
        ({"ratios": [0.0, 1.0]}, r"epoch_source 0 has ratio 0"),
        ({"epoch_source": 2}, r"epoch_source must be in \[0, 2\), got 2"),
        ({"sizes": [5], "ratios": [0.5, 0.5]}, r"equal length, got 1 sizes and 2 ratios"),
    ],
)
def test_bad_settings_name_the_setting(kwargs: dict, message: str) -> None:
    args = {"sizes": [10, 20], "ratios": [0.5, 0.5], "batch_size": 4}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        MixedBatchSampler(**args)


def test_stateful_dataloader_resumes_mid_epoch() -> None:
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    sampler_args = ([30, 60], [0.7, 0.3], 10)

    def loader() -> object:
        sampler = MixedBatchSampler(*sampler_args, seed=9, num_batches=8)
        return stateful.StatefulDataLoader(
            list(range(90)), batch_sampler=sampler, collate_fn=lambda b: b
        )

    full = list(loader())
    first = loader()
    it = iter(first)
    head = [next(it) for _ in range(3)]
    state = first.state_dict()
    second = loader()
    second.load_state_dict(state)
    assert head + list(second) == full
