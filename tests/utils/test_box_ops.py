"""Box conversions, IoU and GIoU against hand-computed values and invariants."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from realsynth.utils.box_ops import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    elementwise_generalized_box_iou,
    generalized_box_iou,
)


def _random_xyxy(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g)
    wh = torch.rand(n, 2, generator=g) * 0.5 + 0.01
    return torch.cat((xy, xy + wh), dim=1)


def test_conversion_hand_values():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), torch.tensor([[0.4, 0.3, 0.6, 0.7]]))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 20))
def test_conversion_round_trip(seed, n):
    boxes = _random_xyxy(seed, n)
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(boxes)), boxes)


def test_iou_and_giou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 4.0, 5.0, 5.0], [0.0, 0.0, 2.0, 2.0]])
    iou, union = box_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 0.0, 1.0]]))
    torch.testing.assert_close(union, torch.tensor([[7.0, 5.0, 4.0]]))
    giou = generalized_box_iou(a, b)
    # overlap: hull 3x3 = 9, union 7; disjoint: hull 5x5 = 25, union 5.
    torch.testing.assert_close(giou, torch.tensor([[1 / 7 - 2 / 9, -20 / 25, 1.0]]))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 12))
def test_elementwise_is_diagonal_of_pairwise_and_bounded(seed, n):
    a, b = _random_xyxy(seed, n), _random_xyxy(seed + 1, n)
    pairwise = generalized_box_iou(a, b)
    paired = elementwise_generalized_box_iou(a, b)
    torch.testing.assert_close(paired, pairwise.diagonal())
    assert (pairwise <= 1).all() and (pairwise >= -1).all()
    torch.testing.assert_close(pairwise, generalized_box_iou(b, a).T)


def test_batched_pairwise_equals_per_image():
    a = _random_xyxy(0, 2 * 5).reshape(2, 5, 4)
    b = _random_xyxy(1, 2 * 3).reshape(2, 3, 4)
    batched = generalized_box_iou(a, b)
    assert batched.shape == (2, 5, 3)
    for i in range(2):
        torch.testing.assert_close(batched[i], generalized_box_iou(a[i], b[i]))


def test_degenerate_boxes_raise_clear_error():
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    bad = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.4, 0.9]])
    with pytest.raises(ValueError, match=r"boxes2: degenerate xyxy box at flat index 1"):
        generalized_box_iou(good, bad)
    with pytest.raises(ValueError, match="x2 >= x1"):
        elementwise_generalized_box_iou(bad, bad[[0, 0]])
    with pytest.raises(ValueError, match="NaN"):
        generalized_box_iou(torch.tensor([[0.0, float("nan"), 1.0, 1.0]]), good)
    # Without the check the call returns numbers: callers opting out validated elsewhere.
    assert generalized_box_iou(good, bad, check=False).shape == (1, 2)


def test_elementwise_shape_mismatch():
    with pytest.raises(ValueError, match="equal shape"):
        elementwise_generalized_box_iou(_random_xyxy(0, 2), _random_xyxy(0, 3))


def test_xywh_flip_clip_and_normalize_by_hand():
    from realsynth.utils.box_ops import (
        box_xywh_to_xyxy,
        clip_boxes_to_image,
        horizontal_flip_boxes,
        normalize_boxes,
    )

    xywh = torch.tensor([[4.0, 6.0, 20.0, 30.0]])
    assert box_xywh_to_xyxy(xywh).tolist() == [[4, 6, 24, 36]]
    assert horizontal_flip_boxes(torch.tensor([[4.0, 6.0, 24.0, 36.0]]), 64).tolist() == [
        [40, 6, 60, 36]
    ]
    boxes = torch.tensor([[-3.0, 2.0, 70.0, 50.0]])
    assert clip_boxes_to_image(boxes, 64, 48).tolist() == [[0, 2, 64, 48]]
    assert boxes.tolist() == [[-3, 2, 70, 50]]  # the input is left alone
    assert normalize_boxes(torch.tensor([[32.0, 24.0, 16.0, 12.0]]), 64, 48).tolist() == [
        [0.5, 0.5, 0.25, 0.25]
    ]
