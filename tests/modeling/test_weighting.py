"""Weighted terms, their divisors, and the one place a batch's weights are derived."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from realsynth.modeling.weighting import (
    batch_weights,
    box_term,
    classification_term,
    reduce_terms,
)


def _value(term):
    return reduce_terms({"t": term})["t"]


def test_box_term_by_hand_in_both_modes():
    losses = torch.tensor([1.0, 1.2, 0.8, 0.9])
    weights = torch.tensor([1.0, 1.0, 0.5, 0.5])
    assert _value(box_term(losses, weights, "count")).item() == pytest.approx(3.05 / 4)
    assert _value(box_term(losses, weights, "weight")).item() == pytest.approx(3.05 / 3)


def test_classification_term_count_mode_is_pytorchs_class_weighted_mean():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 4, generator=g)
    target = torch.tensor([0, 3, 3, 1, 2, 3, 0, 3, 3])
    class_weights = torch.tensor([1.0, 2.0, 0.5, 0.1])
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    term = classification_term(ce, torch.ones(9), class_weights[target], "count")
    expected = torch.nn.functional.cross_entropy(logits, target, weight=class_weights)
    torch.testing.assert_close(_value(term), expected)
    # Image weights then scale each element; the divisor stays the class weights' sum.
    halves = torch.tensor([1.0] * 5 + [0.5] * 4)
    weighted = _value(classification_term(ce, halves, class_weights[target], "count"))
    manual = (halves * class_weights[target] * ce).sum() / class_weights[target].sum()
    torch.testing.assert_close(weighted, manual)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 30))
def test_all_ones_is_the_plain_mean_in_both_modes(seed, n):
    losses = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    ones = torch.ones(n)
    for mode in ("count", "weight"):
        torch.testing.assert_close(_value(box_term(losses, ones, mode)), losses.mean())
        torch.testing.assert_close(
            _value(classification_term(losses, ones, ones, mode)), losses.mean()
        )


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 100.0))
def test_weight_mode_is_scale_invariant(seed, scale):
    g = torch.Generator().manual_seed(seed)
    losses, weights = torch.rand(7, generator=g), torch.rand(7, generator=g) + 0.1
    a = _value(box_term(losses, weights, "weight"))
    b = _value(box_term(losses, weights * scale, "weight"))
    torch.testing.assert_close(a, b)


def test_empty_terms_are_zero_and_stay_in_the_graph():
    empty = torch.zeros(0, requires_grad=True)
    for mode in ("count", "weight"):
        zero = _value(box_term(empty, torch.zeros(0), mode))
        assert zero.item() == 0.0 and zero.requires_grad


def test_reduce_terms_divides_every_term_by_its_own_divisor():
    terms = {
        "a": box_term(torch.tensor([2.0, 4.0]), torch.ones(2), "count"),
        "b": classification_term(torch.tensor([1.0]), torch.tensor([0.5]), torch.ones(1), "weight"),
    }
    values = reduce_terms(terms)
    assert values["a"].item() == pytest.approx(3.0) and values["b"].item() == pytest.approx(1.0)


def test_batch_weights_from_targets_defaults_and_tensors():
    targets = [
        {"source": "real"},
        {"source": "synthetic", "loss_weight": 0.5},
        {"source": "synthetic", "loss_weight": torch.tensor(0.25)},
        {"source": "real", "loss_weight": 2},
    ]
    w = batch_weights(targets, device="cpu")
    torch.testing.assert_close(w.image, torch.tensor([1.0, 0.5, 0.25, 2.0]))
    assert w.source_names == ("real", "synthetic") and w.source_ids.tolist() == [0, 1, 1, 0]


def test_batch_weights_from_the_collated_tensors():
    targets = [{}, {}, {}]
    w = batch_weights(
        targets,
        device="cpu",
        loss_weights=torch.tensor([0.5, 1.0, 0.5]),
        source_ids=torch.tensor([2, 0, 2]),
        source_names=["real", "web", "render"],
    )
    torch.testing.assert_close(w.image, torch.tensor([0.5, 1.0, 0.5]))
    assert w.source_names == ("render", "real") and w.source_ids.tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="2 loss_weights for a batch of 3 images"):
        batch_weights(targets, device="cpu", loss_weights=torch.ones(2))


def test_invalid_weights_name_positions_and_sources():
    targets = [
        {"source": "real", "loss_weight": 1.0},
        {"source": "synthetic", "loss_weight": float("nan")},
        {"source": "real", "loss_weight": 1.0},
        {"source": "web", "loss_weight": torch.tensor(-1.0)},
        {"source": "web", "loss_weight": float("inf")},
    ]
    with pytest.raises(ValueError) as info:
        batch_weights(targets, device="cpu")
    message = str(info.value)
    assert "position 1 (source='synthetic', loss_weight=nan)" in message
    assert "position 3 (source='web', loss_weight=-1.0)" in message
    assert "position 4 (source='web', loss_weight=inf)" in message
    assert "position 0" not in message and "position 2" not in message


def test_fallback_warns_once_and_returns_ones():
    targets = [{"source": "a", "loss_weight": -1.0}, {"source": "b", "loss_weight": float("nan")}]
    with pytest.warns(UserWarning, match="falling back to unweighted") as record:
        w = batch_weights(targets, device="cpu", on_invalid="fallback")
    assert len(record) == 1
    torch.testing.assert_close(w.image, torch.ones(2))


def test_bad_weight_types():
    with pytest.raises(ValueError, match=r"targets\[0\]\['loss_weight'\] must be a number"):
        batch_weights([{"loss_weight": "0.5"}], device="cpu")
    with pytest.raises(ValueError, match="must be a scalar"):
        batch_weights([{"loss_weight": torch.ones(2)}], device="cpu")
    with pytest.raises(ValueError, match="on_invalid"):
        batch_weights([{}], device="cpu", on_invalid="ignore")
