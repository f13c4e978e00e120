"""Adapted loss weights live in the sampler: the weight in force per step, carried by batches.

A decision pushed with ``change_mix`` rules the batches of its step on; batches drawn before it
(in the main process or built ahead by loader workers) keep the weights of their own step, and a
resumed sampler reports and draws the same.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from realsynth.data.collate import collate_relations
from realsynth.mixing.mixed_dataset import Source, build_mixed_loader
from realsynth.mixing.sampler import MixedBatchSampler
from realsynth.mixing.step_schedule import StepSchedule

REAL, SYNTHETIC = 1.0, 0.5
ADAPTED = [1.0, 0.25]


class _Images(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.zeros(3, 2, 2), "image_id": i}


def _loader(horizon: int, num_workers: int = 0):
    sources = [
        Source("real", _Images(40), "real", 0.5, REAL),
        Source("synthetic", _Images(40), "synthetic", 0.5, SYNTHETIC),
    ]
    return build_mixed_loader(
        sources,
        4,
        seed=3,
        num_batches=12,
        num_workers=num_workers,
        collate_fn=collate_relations,
        share_horizon=horizon,
    )


def _weights_of(batch: dict) -> tuple[int, list[float]]:
    """The step a batch was drawn for and its loss weights."""
    return int(batch["targets"][0]["step"]), batch["loss_weights"].tolist()


def _train_with_a_decision(loader, *, decide_after: int, step: int, horizon: int) -> list:
    """Consumes the loader's batches, pushing one weight decision after ``decide_after`` of them
    (as the training loop does after a completed step)."""
    seen = []
    for i, batch in enumerate(loader):
        seen.append((_weights_of(batch), batch["source_ids"].tolist()))
        if i + 1 == decide_after:
            sampler = loader.batch_sampler
            assert sampler.change_mix(step, horizon=horizon, ratios=[0.75, 0.25], weights=ADAPTED)
        if i + 1 == horizon:
            break
    return seen


def test_the_sampler_reports_the_adapted_weight_in_force_and_batches_carry_it() -> None:
    loader = _loader(horizon=4)
    sampler = loader.batch_sampler
    assert sampler.weights_change and sampler.weights_at(7) == [REAL, SYNTHETIC]
    seen = _train_with_a_decision(loader, decide_after=2, step=4, horizon=6)
    # Before the decision's step: the configured weights; from it on: the decided ones.
    assert [sampler.weights_at(s) for s in (0, 3, 4, 5, 100)] == [
        [REAL, SYNTHETIC],
        [REAL, SYNTHETIC],
        ADAPTED,
        ADAPTED,
        ADAPTED,
    ]
    assert [step for (step, _), _ in seen] == [0, 1, 2, 3, 4, 5]
    for (step, weights), source_ids in seen:
        in_force = torch.tensor(sampler.weights_at(step), dtype=torch.float32)
        assert weights == in_force[source_ids].tolist()
        assert set(source_ids) == {0, 1}  # both weights are really carried
    assert sampler.target_shares(4) == pytest.approx([0.75, 0.25], abs=2**-16)


def test_worker_built_batches_carry_the_same_weights_as_in_process_ones() -> None:
    # Two workers prefetch four batches: decisions come an interval of 8 steps ahead, so the
    # batches of the decided steps are drawn only after the decision, whoever builds them.
    runs = [
        _train_with_a_decision(_loader(8, workers), decide_after=3, step=8, horizon=12)
        for workers in (0, 2)
    ]
    assert runs[0] == runs[1]
    weights = {step: sorted(set(w)) for (step, w), _ in runs[1]}
    assert weights[7] == [SYNTHETIC, REAL] and weights[8] == [ADAPTED[1], REAL]


def _decided_sampler() -> MixedBatchSampler:
    sampler = MixedBatchSampler(
        [40, 40], [0.5, 0.5], 4, seed=1, with_steps=True, share_horizon=4, loss_weights=[1, 0.5]
    )
    sampler.change_mix(4, horizon=6, ratios=[0.9, 0.1], weights=ADAPTED)
    return sampler


def test_a_resumed_sampler_keeps_the_adapted_weights() -> None:
    first = _decided_sampler()
    head = _take(first, 3)
    state = first.state_dict()
    assert state["weight_history"] == {"steps": [4], "values": [ADAPTED]}
    resumed = MixedBatchSampler(
        [40, 40], [0.5, 0.5], 4, seed=1, with_steps=True, share_horizon=4, loss_weights=[1, 0.5]
    )
    resumed.load_share_history(state)
    resumed.load_state_dict(state)
    assert [resumed.weights_at(s) for s in (3, 4)] == [[1.0, 0.5], ADAPTED]
    tail = _take(resumed, 3)
    assert head + tail == _take(_decided_sampler(), 6)
    assert {w for index, _, w in tail[-1] if index >= 40} == {ADAPTED[1]}  # step 5: adapted


def _take(sampler: MixedBatchSampler, n: int) -> list:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_weight_decisions_are_refused_where_they_cannot_hold() -> None:
    sampler = MixedBatchSampler([10, 10], [0.5, 0.5], 2, share_horizon=4)
    with pytest.raises(ValueError, match="step 3 must be >= the horizon 4"):
        sampler.change_weights(3, ADAPTED, horizon=8)
    with pytest.raises(ValueError, match="finite and >= 0"):
        sampler.change_mix(4, horizon=8, ratios=[0.9, 0.1], weights=[1.0, -1.0])
    # A refused decision changes nothing, shares included.
    assert sampler.target_shares(4) == [0.5, 0.5] and sampler.share_horizon == 4
    with pytest.raises(ValueError, match="need an adaptive sampler"):
        MixedBatchSampler([10, 10], [0.5, 0.5], 2).change_weights(0, ADAPTED, horizon=2)
    scheduled = [1.0, StepSchedule.linear(1.0, 0.2, 0, 10)]
    planned = MixedBatchSampler([10, 10], [0.5, 0.5], 2, share_horizon=4, loss_weights=scheduled)
    with pytest.raises(ValueError, match="need constant planned weights"):
        planned.change_weights(4, ADAPTED, horizon=8)
    assert planned.weights_at(5) == [1.0, pytest.approx(0.6)]
