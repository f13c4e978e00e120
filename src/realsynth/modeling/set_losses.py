"""Per-layer loss terms of the set criterion, weighted per image (see ``weighting``).

Every function works on the whole batch at once from flat matched indices: no Python loop over
images or queries, and no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from realsynth.modeling.matcher import Assignment
from realsynth.modeling.set_targets import FlatTargets
from realsynth.modeling.weighting import WEIGHT_FLOOR, Normalization, weighted_loss
from realsynth.utils.box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from realsynth.utils.distributed import all_reduce_sum, get_world_size

CeScope = Literal["all", "matched"]


@dataclass(frozen=True)
class BatchContext:
    """What every layer of one criterion call shares (computed once per forward).

    Attributes:
        image_weights: float [B] per-image loss weights.
        source_ids: int64 [B] index of each image's source in the diagnostics' source list.
        num_sources: number of distinct sources in the batch.
        box_denominator: 0-d divisor of the L1/GIoU sums (see :func:`box_denominator`).
        normalization: ``"count"`` or ``"weight"``.
        ce_scope: ``"all"`` queries or only ``"matched"`` ones in classification losses.
    """

    image_weights: Tensor
    source_ids: Tensor
    num_sources: int
    box_denominator: Tensor
    normalization: Normalization
    ce_scope: CeScope


@dataclass(frozen=True)
class Matched:
    """Flat matched pairs of one layer: image, query and flat target index, each int64 [n]."""

    batch: Tensor
    query: Tensor
    target: Tensor


def matched_pairs(assignment: Assignment, flat: FlatTargets, device: torch.device) -> Matched:
    """Concatenate per-image assignments into flat index tensors with one host->device copy."""
    lengths = [len(q) for q, _ in assignment]
    starts = np.concatenate(([0], np.cumsum(flat.sizes)[:-1])).astype(np.int64)
    packed = np.zeros((3, sum(lengths)), dtype=np.int64)
    if packed.shape[1]:
        packed[0] = np.repeat(np.arange(len(lengths)), lengths)
        packed[1] = np.concatenate([q for q, _ in assignment])
        packed[2] = np.concatenate([t + starts[b] for b, (_, t) in enumerate(assignment)])
    batch, query, target = torch.from_numpy(packed).to(device, non_blocking=True)
    return Matched(batch=batch, query=query, target=target)


def box_denominator(
    flat: FlatTargets, image_weights: Tensor, normalization: Normalization
) -> Tensor:
    """DETR's ``num_boxes``: targets in the batch, summed over ranks, divided by world size.

    ``count``: the number of targets (triplets or boxes), clamped to >= 1. ``weight``: the sum of
    the targets' image weights (every target is matched since Q >= T), clamped to a tiny floor.

    Returns:
        0-d float tensor on ``image_weights``' device (one all-reduce under DDP, no host sync).
    """
    sizes = torch.tensor(flat.sizes, dtype=image_weights.dtype).to(image_weights.device)
    if normalization == "count":
        total = sizes.sum()
        floor = 1.0
    else:
        total = (image_weights * sizes).sum()
        floor = WEIGHT_FLOOR
    return (all_reduce_sum(total) / get_world_size()).clamp(min=floor)


def group_means(values: Tensor, weights: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """Detached weighted mean of ``values`` [n, k] per group: sum(w * v) / sum(w) -> [G, k].

    A group without elements reports 0.
    """
    with torch.no_grad():
        values = values.detach().float()
        weights = weights.detach().float()
        num = values.new_zeros(num_groups, values.shape[1]).index_add_(
            0, groups, values * weights[:, None]
        )
        den = values.new_zeros(num_groups).index_add_(0, groups, weights)
        return num / den.clamp(min=WEIGHT_FLOOR)[:, None]


def classification_loss(
    log_probs: Tensor,
    classes: Tensor,
    matched: Matched,
    class_weights: Tensor,
    ctx: BatchContext,
    *,
    diagnostics: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Weighted cross-entropy of one class head.

    Per query: ``w_image * w_class(target) * CE``. ``ce_scope="all"``: every query, unmatched ones
    target the background (last index). Normalization ``count`` divides by ``sum(w_class)`` (so
    all-ones image weights equal ``F.cross_entropy(..., weight=class_weights)``), ``weight`` by
    ``sum(w_image * w_class)``; under DDP the divisor is that sum averaged over ranks.

    Args:
        log_probs: [B, Q, K+1] log-softmax of the logits, background last.
        classes: int64 [T] flat target classes (foreground, < K).
        matched: this layer's flat matched pairs.
        class_weights: [K+1] per-class CE weights (background's is the empty weight).
        ctx: batch context.
        diagnostics: also return the per-source unweighted loss.

    Returns:
        (loss 0-d, per-source unweighted loss [S] detached, or None without diagnostics).
    """
    batch, queries, width = log_probs.shape
    device = log_probs.device
    if ctx.ce_scope == "all":
        target = torch.full((batch, queries), width - 1, dtype=torch.int64, device=device)
        target[matched.batch, matched.query] = classes[matched.target]
        target = target.reshape(-1)
        scores = log_probs.reshape(batch * queries, width)
        image_of = torch.arange(batch, device=device).repeat_interleave(queries)
    else:
        target = classes[matched.target]
        scores = log_probs[matched.batch, matched.query]
        image_of = matched.batch
    ce = F.nll_loss(scores, target, reduction="none")
    w_class = class_weights[target]
    w_image = ctx.image_weights[image_of]
    # count: PyTorch's class-weighted mean; weight: also divide out the image weights. The
    # divisor is averaged over ranks: DDP averages gradients, so the averaged gradient then
    # equals the single-process gradient on the concatenated batch (one process: unchanged).
    local = (w_class if ctx.normalization == "count" else w_image * w_class).sum().detach()
    denominator = all_reduce_sum(local.clone()) / get_world_size()
    loss = weighted_loss(w_class * ce, w_image, denominator=denominator.clamp(min=WEIGHT_FLOOR))
    if not diagnostics:
        return loss, None
    per_source = group_means(ce[:, None], w_class, ctx.source_ids[image_of], ctx.num_sources)
    return loss, per_source[:, 0]


def box_losses(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    matched: Matched,
    ctx: BatchContext,
    *,
    diagnostics: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Weighted L1 and GIoU losses of one box head over the matched pairs.

    Args:
        pred_boxes: [B, Q, 4] cxcywh predictions in [0, 1].
        target_boxes: [T, 4] cxcywh flat targets.
        matched: this layer's flat matched pairs.
        ctx: batch context (its ``box_denominator`` divides both sums).
        diagnostics: also return the per-source unweighted losses.

    Returns:
        (l1 0-d, giou 0-d, per-source unweighted [S, 2] (l1, giou) detached, divided by the
        source's local target count, or None without diagnostics).
    """
    src = pred_boxes[matched.batch, matched.query].float()
    tgt = target_boxes[matched.target]
    l1 = (src - tgt).abs().sum(dim=1)
    giou = 1 - elementwise_generalized_box_iou(
        box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt), check=False
    )
    w_image = ctx.image_weights[matched.batch]
    loss_l1 = weighted_loss(l1, w_image, denominator=ctx.box_denominator)
    loss_giou = weighted_loss(giou, w_image, denominator=ctx.box_denominator)
    if not diagnostics:
        return loss_l1, loss_giou, None
    per_source = group_means(
        torch.stack((l1, giou), dim=1),
        torch.ones_like(l1),
        ctx.source_ids[matched.batch],
        ctx.num_sources,
    )
    return loss_l1, loss_giou, per_source
