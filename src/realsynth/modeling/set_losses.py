"""Per-layer loss terms of the set criterion, as weighted terms (see ``weighting``).

Every function works on the whole batch at once from flat matched indices: no Python loop over
images or queries, and no host sync. The terms come back undivided (:class:`WeightedTerm`): the
criterion divides all of them at once, with one all-reduce per forward under DDP.
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
from realsynth.modeling.weighting import (
    BatchWeights,
    Normalization,
    WeightedTerm,
    box_term,
    classification_term,
    per_source_means,
)
from realsynth.utils.box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou

CeScope = Literal["all", "matched"]


@dataclass(frozen=True)
class BatchContext:
    """What every layer of one criterion call shares (computed once per forward).

    Attributes:
        weights: per-image loss weights and sources of the batch.
        normalization: ``"count"`` or ``"weight"``.
        ce_scope: ``"all"`` queries or only ``"matched"`` ones in classification losses.
        background: float32 [B] weight of the no-object / no-relation CE of each image's
            unmatched queries, or None (all 1).
    """

    weights: BatchWeights
    normalization: Normalization
    ce_scope: CeScope
    background: Tensor | None = None

    @property
    def num_sources(self) -> int:
        return len(self.weights.source_names)


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


def classification_loss(
    log_probs: Tensor,
    classes: Tensor,
    matched: Matched,
    class_weights: Tensor,
    ctx: BatchContext,
    *,
    diagnostics: bool = True,
    flat: FlatTargets | None = None,
) -> tuple[WeightedTerm, Tensor | None]:
    """Weighted cross-entropy of one class head.

    Per query: ``w_image * w_class(target) * CE``. ``ce_scope="all"``: every query, unmatched ones
    target the background (last index). The divisor follows ``weighting.classification_term``, so
    all-ones image weights equal ``F.cross_entropy(..., weight=class_weights)``.

    Args:
        log_probs: [B, Q, K+1] log-softmax of the logits, background last.
        classes: int64 [T] flat target classes (foreground, < K).
        matched: this layer's flat matched pairs.
        class_weights: [K+1] per-class CE weights (background's is the empty weight).
        ctx: batch context.
        diagnostics: also return the per-source unweighted loss.
        flat: the targets, for their instance weights and ignore flags (None: all 1, none).

    Returns:
        (the term, per-source unweighted loss [S] detached, or None without diagnostics).
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
    w_image = ctx.weights.image[image_of]
    if ctx.ce_scope == "all":
        trust = _query_trust(batch, queries, matched, ctx, flat)
    else:
        trust = _pair_trust(matched, flat)
    if trust is not None:
        multiplier, included = trust
        w_image, w_class = w_image * multiplier * included, w_class * included
    term = classification_term(ce, w_image, w_class, ctx.normalization)
    if not diagnostics:
        return term, None
    source_of = ctx.weights.source_ids[image_of]
    return term, per_source_means(ce[:, None], w_class, source_of, ctx.num_sources)[:, 0]


def _query_trust(
    batch: int, queries: int, matched: Matched, ctx: BatchContext, flat: FlatTargets | None
) -> tuple[Tensor, Tensor] | None:
    """Per query [B * Q]: weight multiplier (matched: instance weight; unmatched: background
    weight) and whether it counts (not matched to an ignored target); None when all are 1."""
    weights = flat.instance_weights if flat is not None else None
    ignored = flat.ignored if flat is not None else None
    if ctx.background is None and weights is None and ignored is None:
        return None
    device = ctx.weights.image.device
    multiplier = torch.ones(batch, queries, device=device)
    if ctx.background is not None:
        multiplier = multiplier * ctx.background[:, None]
    multiplier[matched.batch, matched.query] = (
        weights[matched.target] if weights is not None else 1.0
    )
    included = torch.ones(batch, queries, device=device)
    if ignored is not None:
        included[matched.batch, matched.query] = (~ignored[matched.target]).float()
    return multiplier.reshape(-1), included.reshape(-1)


def _pair_trust(matched: Matched, flat: FlatTargets | None) -> tuple[Tensor, Tensor] | None:
    """Per matched pair [n]: instance weight and whether it counts; None when all are 1."""
    if flat is None or (flat.instance_weights is None and flat.ignored is None):
        return None
    n = matched.target.shape[0]
    device = matched.target.device
    weights = (
        flat.instance_weights[matched.target]
        if flat.instance_weights is not None
        else torch.ones(n, device=device)
    )
    included = (
        (~flat.ignored[matched.target]).float()
        if flat.ignored is not None
        else torch.ones(n, device=device)
    )
    return weights, included


def box_losses(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    matched: Matched,
    ctx: BatchContext,
    *,
    diagnostics: bool = True,
    flat: FlatTargets | None = None,
) -> tuple[WeightedTerm, WeightedTerm, Tensor | None]:
    """Weighted L1 and GIoU terms of one box head over the matched pairs.

    Args:
        pred_boxes: [B, Q, 4] cxcywh predictions in [0, 1].
        target_boxes: [T, 4] cxcywh flat targets.
        matched: this layer's flat matched pairs.
        ctx: batch context.
        diagnostics: also return the per-source unweighted losses.
        flat: the targets, for their instance weights and ignore flags (None: all 1, none).

    Returns:
        (l1 term, giou term, per-source unweighted [S, 2] (l1, giou) means per matched pair,
        detached, or None without diagnostics).
    """
    src = pred_boxes[matched.batch, matched.query].float()
    tgt = target_boxes[matched.target]
    l1 = (src - tgt).abs().sum(dim=1)
    giou = 1 - elementwise_generalized_box_iou(
        box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt), check=False
    )
    w_image = ctx.weights.image[matched.batch]
    included = None
    trust = _pair_trust(matched, flat)
    if trust is not None:
        w_image = w_image * trust[0]
        included = trust[1].bool()
    l1_term = box_term(l1, w_image, ctx.normalization, included)
    giou_term = box_term(giou, w_image, ctx.normalization, included)
    if not diagnostics:
        return l1_term, giou_term, None
    per_source = per_source_means(
        torch.stack((l1, giou), dim=1),
        torch.ones_like(l1) if included is None else included.float(),
        ctx.weights.source_ids[matched.batch],
        ctx.num_sources,
    )
    return l1_term, giou_term, per_source
