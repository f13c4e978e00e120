"""MixedBatchSampler and the mixed loader under share and loss-weight schedules."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realsynth.mixing.mixed_dataset import MixedDataset, Source, build_mixed_loader
from realsynth.mixing.sampler import MixedBatchSampler
from realsynth.mixing.step_schedule import StepSchedule

# The stream of MixedBatchSampler([10, 20, 30], [0.5, 0.3, 0.2], 7, seed=3) before schedules
# existed (computed with the previous release): constant shares must keep it bit for bit.
GOLDEN = [[1, 0, 7, 5, 21, 26, 42], [2, 4, 3, 27, 29, 35, 48], [6, 8, 9, 6, 25, 10, 43]]
GOLDEN_RANK1_OF_2 = [[2, 4, 3, 27, 29, 35, 48], [9, 4, 3, 12, 13, 44, 37]]


def test_constant_schedules_yield_the_stream_of_plain_ratios() -> None:
    sizes = [10, 20, 30]
    plain = MixedBatchSampler(sizes, [0.5, 0.3, 0.2], 7, seed=3)
    constant = [StepSchedule.constant(r) for r in (0.5, 0.3, 0.2)]
    scheduled = MixedBatchSampler(sizes, constant, 7, seed=3)
    assert list(plain) == list(scheduled) == GOLDEN
    assert not scheduled.is_scheduled and "ratio_schedules" not in scheduled.state_dict()
    ranked = MixedBatchSampler(sizes, constant, 7, seed=3, rank=1, world_size=2)
    assert list(ranked)[:2] == GOLDEN_RANK1_OF_2


@st.composite
def scheduled_mixes(draw: st.DrawFn) -> dict:
    k = draw(st.integers(2, 4))
    value = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.8, 1.0])
    ratios: list[StepSchedule] = [
        StepSchedule.steps([[0, 1.0], [draw(st.integers(1, 30)), 0.5]], 1.0)
    ]
    for _ in range(k - 1):
        if draw(st.booleans()):
            a, b = sorted(draw(st.lists(st.integers(0, 30), min_size=2, max_size=2)))
            ratios.append(StepSchedule.linear(draw(value), draw(value), a, b))
        else:
            at = sorted(draw(st.sets(st.integers(0, 30), min_size=1, max_size=3)))
            ratios.append(StepSchedule.steps([[s, draw(value)] for s in at], draw(value)))
    return {
        "sizes": [draw(st.integers(1, 40)) for _ in range(k)],
        "ratios": ratios,
        "batch_size": k + draw(st.integers(0, 12)),
        "seed": draw(st.integers(0, 2**31)),
    }


def _stream(sampler: MixedBatchSampler, epochs: int) -> list[list[int]]:
    out: list[list[int]] = []
    for e in range(epochs):
        sampler.set_epoch(e)
        out.extend(sampler)
    return out


def _source_ids(batch: list[int], sizes: list[int]) -> np.ndarray:
    return np.searchsorted(np.cumsum(sizes), np.asarray(batch), side="right")


@settings(max_examples=30, deadline=None)
@given(mix=scheduled_mixes(), world=st.integers(1, 3))
def test_ddp_ranks_are_exact_for_their_global_batch_and_disjoint(mix: dict, world: int) -> None:
    per_rank = 20
    ranks = [
        MixedBatchSampler(**mix, num_batches=per_rank, rank=r, world_size=world)
        for r in range(world)
    ]
    streams = [_stream(s, 2) for s in ranks]
    comp = ranks[0].schedule
    # Global batch g is rank g % W's batch g // W.
    in_order = [streams[g % world][g // world] for g in range(2 * per_rank * world)]
    expected = comp.counts(np.arange(len(in_order)))
    for g, batch in enumerate(in_order):
        ids = _source_ids(batch, mix["sizes"])
        assert (np.diff(ids) >= 0).all()
        assert np.bincount(ids, minlength=len(mix["sizes"])).tolist() == expected[g].tolist()
    flat = np.concatenate([np.asarray(b) for b in in_order])
    ids = _source_ids(flat.tolist(), mix["sizes"])
    for k, size in enumerate(mix["sizes"]):
        items = flat[ids == k]
        for p in range(0, len(items), size):  # passes without repeats, across ranks too
            chunk = items[p : p + size].tolist()
            assert len(set(chunk)) == len(chunk)


@settings(max_examples=25, deadline=None)
@given(mix=scheduled_mixes(), cut=st.integers(0, 50), with_steps=st.booleans())
def test_resume_mid_schedule_equals_uninterrupted(mix: dict, cut: int, with_steps: bool) -> None:
    kwargs = dict(mix, num_batches=25, with_steps=with_steps)
    full = _stream(MixedBatchSampler(**kwargs), 2)
    first = MixedBatchSampler(**kwargs)
    epochs = (first for e in range(2) if first.set_epoch(e) is None)
    head = list(itertools.islice(itertools.chain.from_iterable(epochs), cut))
    state = first.state_dict()
    assert state["ratio_schedules"] == [r.definition() for r in mix["ratios"]]
    resumed = MixedBatchSampler(**kwargs)
    resumed.load_state_dict(state)
    tail: list = []
    for e in range(resumed.epoch, 2):
        resumed.set_epoch(e)
        tail.extend(resumed)
    assert head + tail == full


@pytest.mark.parametrize("world", [1, 2])
def test_synthetic_dropped_to_zero_at_step_n_never_appears_again(world: int) -> None:
    drop = 7
    ratios = [
        StepSchedule.steps([[drop, 1.0]], 0.6),
        StepSchedule.steps([[drop, 0.0]], 0.4),
    ]
    ranks = [
        MixedBatchSampler(
            [50, 80], ratios, 5, num_batches=30, rank=r, world_size=world, with_steps=True
        )
        for r in range(world)
    ]
    for sampler in ranks:
        for i, batch in enumerate(sampler):
            step = sampler.global_batch(i) // world
            assert {s for _, s, _ in batch} == {step}
            assert {w for _, _, w in batch} == {1.0}  # no loss_weights: 1.0 each
            synthetic = sum(index >= 50 for index, _, _ in batch)
            assert synthetic == (0 if step >= drop else 2)


def test_state_of_another_schedule_is_refused() -> None:
    linear = [StepSchedule.linear(0.2, 0.8, 0, 50), StepSchedule.linear(0.8, 0.2, 0, 50)]
    cosine = [StepSchedule.cosine(0.2, 0.8, 0, 50), StepSchedule.cosine(0.8, 0.2, 0, 50)]
    saved = MixedBatchSampler([10, 10], linear, 4, num_batches=5).state_dict()
    with pytest.raises(ValueError, match="saved with ratio schedules .*'kind': 'linear'"):
        MixedBatchSampler([10, 10], cosine, 4, num_batches=5).load_state_dict(saved)
    with pytest.raises(ValueError, match="but this sampler has None"):
        MixedBatchSampler([10, 10], [0.5, 0.5], 4, num_batches=5).load_state_dict(saved)


def test_epoch_is_one_pass_at_the_final_share() -> None:
    # Real share 0.2 -> 0.8: the epoch is ceil(100 / (0.8 * 10)) = 13 batches.
    ratios = [StepSchedule.linear(0.2, 0.8, 0, 40), StepSchedule.linear(0.8, 0.2, 0, 40)]
    sampler = MixedBatchSampler([100, 100], ratios, 10)
    assert len(sampler) == 13 and len(list(sampler)) == 13
    sampler.set_epoch(3)
    assert sampler.global_batch(0) == 39
    pretrain = [StepSchedule.steps([[10, 0.0]], 1.0), StepSchedule.steps([[10, 1.0]], 0.0)]
    with pytest.raises(ValueError, match="has ratio 0 after the schedules' last change"):
        MixedBatchSampler([100, 100], pretrain, 10)
    assert len(MixedBatchSampler([100, 100], pretrain, 10, num_batches=4)) == 4


def test_ratio_schedules_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match=r"ratios\[1\] must be in \[0, 1\], got linear 0.5 -> 1.5"):
        MixedBatchSampler([10, 10], [0.5, StepSchedule.linear(0.5, 1.5, 0, 9)], 4)


def test_billion_item_sources_under_a_schedule_stay_small() -> None:
    ratios = [StepSchedule.linear(0.3, 0.9, 0, 10_000), StepSchedule.linear(0.7, 0.1, 0, 10_000)]
    tracemalloc.start()
    sampler = MixedBatchSampler([10**9, 10**9], ratios, 32, num_batches=10**6)
    sampler.set_epoch(10**5)  # global batch 10^11, far past the schedule
    first = next(iter(sampler))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 10 * 2**20
    assert sum(i < 10**9 for i in first) in (28, 29)  # 0.9 * 32 = 28.8


class _Items:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"i": i}


def test_loss_weight_schedule_reaches_each_item_at_its_step() -> None:
    weight = StepSchedule.linear(0.5, 0.0, 0, 10)
    sources = [
        Source("real", _Items(20), "real", 0.5, 1.0),
        Source("synth", _Items(40), "synthetic", 0.5, weight),
    ]
    dataset = MixedDataset(sources)
    assert dataset[(25, 4, 0.3)]["loss_weight"] == 0.3 and dataset[(25, 4, 0.3)]["step"] == 4
    assert dataset[3]["loss_weight"] == 1.0  # a constant weight needs no step
    with pytest.raises(ValueError, match="'synth' has a loss-weight schedule"):
        dataset[25]
    with pytest.raises(TypeError, match=r"an \(index, step, weight\) triple"):
        dataset[(25, 4)]
    loader = build_mixed_loader(sources, 4, seed=0, num_batches=12)
    sampler = loader.batch_sampler
    assert sampler.with_steps and sampler.weights_change and not sampler.shares_change
    assert sampler.weights_at(4) == [1.0, pytest.approx(0.3)]
    for step, batch in enumerate(loader):
        synth = [item for item in batch if item["source"] == "synth"]
        assert {item["step"] for item in batch} == {step}
        assert all(item["loss_weight"] == pytest.approx(weight.value(step)) for item in synth)


def test_loss_weights_resume_exactly_with_the_sampler() -> None:
    weight = StepSchedule.cosine(1.0, 0.2, 0, 8)
    sources = [
        Source("real", _Items(16), "real", 0.5, 1.0),
        Source("synth", _Items(16), "synthetic", 0.5, weight),
    ]
    full = [[(i["i"], i["loss_weight"]) for i in b] for b in build_mixed_loader(sources, 4, seed=1)]
    first = build_mixed_loader(sources, 4, seed=1)
    it = iter(first)
    head = [[(i["i"], i["loss_weight"]) for i in next(it)] for _ in range(3)]
    resumed = build_mixed_loader(sources, 4, seed=1)
    resumed.batch_sampler.load_state_dict(first.batch_sampler.state_dict())
    tail = [[(i["i"], i["loss_weight"]) for i in b] for b in resumed]
    assert head + tail == full
