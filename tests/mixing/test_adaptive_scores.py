"""The scores of adaptive mixing: the cosine's count bias, and a projection score without it."""

from __future__ import annotations

import math

import pytest
import torch

from realsynth.mixing.adaptive import AdaptiveMixer, projection_score
from realsynth.mixing.alignment import cosine_scores, projection_parts


def _half_sums(items: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per source, the sums of alternate items (halves A and B) of float64 [B, P] ``items``
    labelled by int64 [B] ``source``: [2 K, P] rows and [2 K] counts."""
    rows, counts = [], []
    for k in range(int(source.max()) + 1):
        mine = items[source == k]
        for half in (mine[0::2], mine[1::2]):
            rows.append(half.sum(0))
            counts.append(float(len(half)))
    return torch.stack(rows), torch.tensor(counts, dtype=torch.float64)


def _scores_for_count(n: int, draws: int) -> tuple[float, float]:
    """Mean cosine and projection score of source 0 with ``n`` of 16 items: every item's
    gradient is the same mean plus much larger noise, as early in training."""
    gen = torch.Generator().manual_seed(n)
    mean = torch.zeros(200, dtype=torch.float64)
    mean[0] = 5.0
    cosines, parts = [], []
    for _ in range(draws):
        items = mean + torch.randn(32, 200, generator=gen, dtype=torch.float64)
        source = torch.tensor([0] * n + [1] * (16 - n) + [2] * 16)  # source 2: the holdout
        grads, counts = _half_sums(items, source)
        whole = grads.view(-1, 2, 200).sum(1)
        cosines.append(cosine_scores(whole, counts.view(-1, 2).sum(1))[0])
        parts.append(projection_parts(grads, counts)[0])
    averaged = torch.tensor(parts).mean(0).tolist()  # the mixer averages the parts
    return sum(cosines) / draws, projection_score(averaged)


def test_the_cosine_grows_with_the_count_and_the_projection_score_does_not() -> None:
    few, many = _scores_for_count(2, 200), _scores_for_count(14, 200)
    # Every item comes from the same distribution, so a fair score is the same for both.
    assert many[0] - few[0] > 0.2, (few, many)  # the cosine's bias (the defect)
    assert few[1] == pytest.approx(many[1], abs=0.15), (few, many)
    assert few[1] == pytest.approx(1.0, abs=0.2)  # the cosine of the mean gradients


def test_the_projection_score_by_hand() -> None:
    assert projection_score([0.5, 1.0, 2.0, 4.0, 5.0]) == pytest.approx(0.25)
    # A half product below the floor (noise hides the mean) counts as 1e-3 of its norms.
    assert projection_score([0.001, -1.0, 2000.0, 4.0, 5.0]) == pytest.approx(0.001 / math.sqrt(8))
    assert projection_score([3.0, 1.0, 2.0, 1.0, 5.0]) == 1.0  # clipped to [-1, 1]
    assert projection_score([-3.0, 1.0, 2.0, 1.0, 5.0]) == -1.0
    assert projection_score([0.0, 0.0, 0.0, 0.0, 0.0]) == 0.0


def test_the_mixer_averages_the_parts_then_takes_their_ratio() -> None:
    mixer = AdaptiveMixer(**_settings(), score="projection")
    first = [[0.5, 1.0, 2.0, 1.0, 2.0], [0.1, 1.0, 2.0, 1.0, 2.0]]
    mixer.decide(10, [0.5, 0.1], first)
    second = [[0.5, 0.0, 2.0, 1.0, 2.0], None]  # the synthetic source absent: kept
    decision = mixer.decide(20, [0.5, None], second)
    # Parts averaged: [0.5, 0.5, 2, 1, 2] -> 0.5 / sqrt(0.5), not the mean of two ratios.
    assert decision.smoothed == pytest.approx([0.5 / math.sqrt(0.5), 0.1])
    state = mixer.state_dict()
    assert state["parts"][0] == pytest.approx([0.5, 0.5, 2.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="needs the measured parts"):
        mixer.decide(30, [0.5, 0.1])
    with pytest.raises(ValueError, match="unknown score 'dot'"):
        AdaptiveMixer(**{**_settings(), "score": "dot"})


def _settings() -> dict:
    return dict(
        names=["real", "synthetic"],
        kinds=["real", "synthetic"],
        ratios=[0.7, 0.3],
        weights=[1.0, 0.5],
        interval=10,
        step_size=1.0,
        smoothing=0.5,
        min_ratios=[0.05, 0.05],
        max_ratios=[0.95, 0.95],
    )
