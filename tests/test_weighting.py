"""Weighted reductions (the design note's worked examples) and loss-weight extraction."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from realsynth.modeling.weighting import image_weights, weighted_loss


def test_note_example_one():
    losses = torch.tensor([1.0, 1.2, 0.8, 0.9])
    weights = torch.tensor([1.0, 1.0, 0.5, 0.5])
    assert weighted_loss(losses, weights).item() == pytest.approx(0.7625)
    assert losses.mean().item() == pytest.approx(0.975)


def test_note_example_two_per_image_weights():
    losses = torch.tensor([0.8, 1.2, 0.9, 1.1, 0.7, 0.6, 0.5, 0.4, 0.3])
    batch_index = torch.tensor([0, 0, 1, 2, 2, 2, 7, 8, 8])
    per_image = torch.tensor([1.0] * 7 + [0.5] * 3)
    result = weighted_loss(losses, per_image[batch_index])
    # The note prints 5.8/9 = 0.644; its own terms add up to 5.9 (see DESIGN.md).
    assert result.item() == pytest.approx(5.9 / 9)
    assert round(result.item(), 4) == 0.6556
    assert losses.mean().item() == pytest.approx(0.7222, abs=1e-4)


def test_weight_normalization_hand_value():
    losses = torch.tensor([1.0, 1.2, 0.8, 0.9])
    weights = torch.tensor([1.0, 1.0, 0.5, 0.5])
    expected = (1.0 + 1.2 + 0.4 + 0.45) / 3.0
    assert weighted_loss(losses, weights, normalization="weight").item() == pytest.approx(expected)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 30), st.sampled_from([0, 1, 4]))
def test_all_ones_is_plain_mean_in_both_modes(seed, n, k):
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(n, generator=g) if k == 0 else torch.rand(n, k, generator=g)
    ones = torch.ones(n)
    for mode in ("count", "weight"):
        torch.testing.assert_close(weighted_loss(losses, ones, normalization=mode), losses.mean())


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 100.0))
def test_weight_mode_is_scale_invariant(seed, scale):
    g = torch.Generator().manual_seed(seed)
    losses, weights = torch.rand(7, 4, generator=g), torch.rand(7, generator=g) + 0.1
    a = weighted_loss(losses, weights, normalization="weight")
    b = weighted_loss(losses, weights * scale, normalization="weight")
    torch.testing.assert_close(a, b)


def test_denominator_override_and_empty():
    losses = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    out = weighted_loss(losses, torch.tensor([1.0, 0.5]), denominator=torch.tensor(2.0))
    assert out.item() == pytest.approx((3.0 + 3.5) / 2)
    empty = torch.zeros(0, 4, requires_grad=True)
    for mode in ("count", "weight"):
        zero = weighted_loss(empty, torch.zeros(0), normalization=mode)
        assert zero.item() == 0.0 and zero.requires_grad


def test_weighted_loss_bad_arguments():
    with pytest.raises(ValueError, match=r"weights \[N\]"):
        weighted_loss(torch.rand(3), torch.rand(4))
    with pytest.raises(ValueError, match="normalization"):
        weighted_loss(torch.rand(3), torch.rand(3), normalization="mean")


def test_image_weights_defaults_and_tensors():
    targets = [
        {"source": "real"},
        {"source": "synthetic", "loss_weight": 0.5},
        {"source": "synthetic", "loss_weight": torch.tensor(0.25)},
        {"source": "real", "loss_weight": 2},
    ]
    w = image_weights(targets, device="cpu")
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, 0.25, 2.0]))


def test_image_weights_invalid_names_positions_and_sources():
    targets = [
        {"source": "real", "loss_weight": 1.0},
        {"source": "synthetic", "loss_weight": float("nan")},
        {"source": "real", "loss_weight": 1.0},
        {"source": "web", "loss_weight": torch.tensor(-1.0)},
        {"source": "web", "loss_weight": float("inf")},
    ]
    with pytest.raises(ValueError) as info:
        image_weights(targets, device="cpu")
    message = str(info.value)
    assert "position 1 (source='synthetic', loss_weight=nan)" in message
    assert "position 3 (source='web', loss_weight=-1.0)" in message
    assert "position 4 (source='web', loss_weight=inf)" in message
    assert "position 0" not in message and "position 2" not in message


def test_image_weights_fallback_warns_once_and_returns_ones():
    targets = [{"source": "a", "loss_weight": -1.0}, {"source": "b", "loss_weight": float("nan")}]
    with pytest.warns(UserWarning, match="falling back to unweighted") as record:
        w = image_weights(targets, device="cpu", on_invalid="fallback")
    assert len(record) == 1
    torch.testing.assert_close(w, torch.ones(2))


def test_image_weights_bad_types():
    with pytest.raises(ValueError, match=r"targets\[0\]\['loss_weight'\] must be a number"):
        image_weights([{"loss_weight": "0.5"}], device="cpu")
    with pytest.raises(ValueError, match="must be a scalar"):
        image_weights([{"loss_weight": torch.ones(2)}], device="cpu")
    with pytest.raises(ValueError, match="on_invalid"):
        image_weights([{}], device="cpu", on_invalid="ignore")
