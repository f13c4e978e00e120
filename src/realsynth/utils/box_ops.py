"""Box conversions, IoU and generalized IoU (torchvision is not a dependency).

Formats: ``cxcywh`` is (center x, center y, width, height), ``xyxy`` is (x1, y1, x2, y2) and
``xywh`` is COCO's (top-left x, top-left y, width, height). All functions work for normalized
[0, 1] and pixel coordinates alike. They live in ``utils`` so that the data layer (formats,
transforms) and the modeling layer (matcher, losses) share one implementation. Pairwise functions
accept leading batch dimensions: boxes1 [..., N, 4] and boxes2 [..., M, 4] give [..., N, M], so a
matcher can build the cost of every image of a batch in one call.

Degenerate boxes (x2 < x1 or y2 < y1) make GIoU meaningless and raise a ``ValueError``. The check
needs the result on the host (one device->host sync on an accelerator); callers that validate
their inputs elsewhere, like the matcher, pass ``check=False``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert [..., 4] boxes from cxcywh to xyxy (same units)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """Convert [..., 4] boxes from xyxy to cxcywh (same units)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert [..., 4] boxes from COCO's xywh (top-left corner, width, height) to xyxy."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def clip_boxes_to_image(boxes: Tensor, width: float, height: float) -> Tensor:
    """Clip [..., 4] xyxy boxes to ``[0, width] x [0, height]`` (a new tensor; none dropped)."""
    out = boxes.clone()
    out[..., 0::2] = out[..., 0::2].clamp(0, width)
    out[..., 1::2] = out[..., 1::2].clamp(0, height)
    return out


def horizontal_flip_boxes(boxes: Tensor, width: float) -> Tensor:
    """Mirror [..., 4] xyxy boxes of an image ``width`` wide about its vertical center line."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((width - x2, y1, width - x1, y2), dim=-1)


def normalize_boxes(boxes: Tensor, width: float, height: float) -> Tensor:
    """Divide [..., 4] boxes (xyxy or cxcywh) in pixels by the image size: [0, 1] coordinates."""
    return boxes / boxes.new_tensor([width, height, width, height])


def box_area(boxes: Tensor) -> Tensor:
    """Area of [..., 4] xyxy boxes, shape [...]."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def check_boxes_xyxy(boxes: Tensor, name: str = "boxes") -> None:
    """Raise ``ValueError`` if any xyxy box has x2 < x1 or y2 < y1 (NaN coordinates included).

    Args:
        boxes: [..., 4] xyxy boxes.
        name: what to call the tensor in the error message.
    """
    if boxes.shape[-1] != 4:
        raise ValueError(f"{name}: expected boxes of shape [..., 4], got {tuple(boxes.shape)}")
    flat = boxes.reshape(-1, 4)
    bad = ~(flat[:, 2:] >= flat[:, :2]).all(dim=1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{name}: degenerate xyxy box at flat index {first} ({flat[first].tolist()}); "
            "expected x2 >= x1 and y2 >= y1 (in cxcywh: width and height >= 0, not NaN)"
        )


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of xyxy boxes.

    Args:
        boxes1: [..., N, 4] xyxy boxes.
        boxes2: [..., M, 4] xyxy boxes (leading dimensions broadcast with boxes1's).

    Returns:
        (iou, union), each [..., N, M].
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.min(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter / union, union


def pixel_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes in integer-pixel convention, in float32.

    Scene-Graph-Benchmark's (maskrcnn-benchmark's) ``boxlist_iou``: a box covers the pixels
    ``x1..x2`` inclusive, so widths and heights are ``x2 - x1 + 1`` and an intersection is
    ``min(x2) - max(x1) + 1`` (at least 0). Published VG150 recalls are computed this way, in
    the original image's pixels.

    Args:
        boxes1: [N, 4] xyxy pixel boxes.
        boxes2: [M, 4] xyxy pixel boxes.

    Returns:
        [N, M] float32 IoU.
    """
    boxes1, boxes2 = boxes1.to(torch.float32), boxes2.to(torch.float32)
    area1 = (boxes1[:, 2] - boxes1[:, 0] + 1) * (boxes1[:, 3] - boxes1[:, 1] + 1)
    area2 = (boxes2[:, 2] - boxes2[:, 0] + 1) * (boxes2[:, 3] - boxes2[:, 1] + 1)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor, *, check: bool = True) -> Tensor:
    """Pairwise generalized IoU (https://giou.stanford.edu/) of xyxy boxes.

    Args:
        boxes1: [..., N, 4] xyxy boxes.
        boxes2: [..., M, 4] xyxy boxes (leading dimensions broadcast with boxes1's).
        check: validate both inputs with :func:`check_boxes_xyxy` first (one host sync).

    Returns:
        [..., N, M] GIoU values in [-1, 1].
    """
    if check:
        check_boxes_xyxy(boxes1, "boxes1")
        check_boxes_xyxy(boxes2, "boxes2")
    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.max(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = rb - lt
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull


def elementwise_generalized_box_iou(
    boxes1: Tensor, boxes2: Tensor, *, check: bool = True
) -> Tensor:
    """GIoU of paired xyxy boxes (row i with row i), without building an N x N matrix.

    Args:
        boxes1: [..., 4] xyxy boxes.
        boxes2: [..., 4] xyxy boxes, same shape as boxes1.
        check: validate both inputs with :func:`check_boxes_xyxy` first (one host sync).

    Returns:
        [...] GIoU values in [-1, 1].
    """
    if boxes1.shape != boxes2.shape:
        raise ValueError(
            f"elementwise GIoU needs paired boxes of equal shape, got {tuple(boxes1.shape)} "
            f"and {tuple(boxes2.shape)}"
        )
    if check:
        check_boxes_xyxy(boxes1, "boxes1")
        check_boxes_xyxy(boxes2, "boxes2")
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    inter_wh = (
        torch.min(boxes1[..., 2:], boxes2[..., 2:]) - torch.max(boxes1[..., :2], boxes2[..., :2])
    ).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = area1 + area2 - inter
    hull_wh = torch.max(boxes1[..., 2:], boxes2[..., 2:]) - torch.min(
        boxes1[..., :2], boxes2[..., :2]
    )
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return inter / union - (hull - union) / hull
