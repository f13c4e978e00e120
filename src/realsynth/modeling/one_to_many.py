"""SpeaQ's quality-aware multi-assignment and group mask, as a relation matcher.

SpeaQ (Kim et al., "Groupwise Query Specialization and Quality-Aware Multi-Assignment for
Transformer-based Visual Relationship Detection", CVPR 2024; mlvlab/SpeaQ,
``SpeaQHungarianMatcher.forward_relation``):

- quality of query i for ground-truth triplet j:
  ``q_ij = combine(IoU(subject_i, subject_j) * m_ij, IoU(object_i, object_j) * m_ij)
  + predicate_weight * p_i(predicate_j)``, with plain IoU (not GIoU) of the predicted and true
  boxes, ``combine`` one of min, max, geometric mean (``gm``), arithmetic mean (``am``), ``m_ij``
  the group mask (1 inside the query's group, 0 outside; 1 without groups) and ``p_i`` the softmax
  of the relation logits (background included). SpeaQ's recipe: max, weight -0.5;
- copies of triplet j: ``k_j = max(1, floor(sum of the K largest q_ij over the image's queries))``
  (``dynamic``), or ``K`` for every triplet (``static``); each triplet is repeated ``k_j`` times
  and the ordinary Hungarian matching runs on the expanded cost;
- group mask in the cost: ``+1e6`` for a query outside the triplet's predicate group.

One guard SpeaQ does not have: when the copies of an image exceed its queries, the largest
``k_j`` are lowered (never below 1) until they fit (:func:`matcher.assign_copies`), so that
every triplet is matched at least once (SpeaQ's rectangular assignment would leave some triplet
unmatched).

Matching never sees the per-image loss weights, with copies too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from realsynth.modeling.heads import RELATION_HEADS, HeadSpec
from realsynth.modeling.matcher import HungarianMatcher
from realsynth.modeling.predicate_groups import PredicateGroups
from realsynth.modeling.set_targets import FlatTargets
from realsynth.utils.box_ops import box_cxcywh_to_xyxy, box_iou

Scheme = Literal["none", "static", "dynamic"]
Combine = Literal["min", "max", "gm", "am"]
GROUP_PENALTY = 1e6  # SpeaQ's: large enough to lose against any in-group cost

__all__ = ["QualityAwareMatcher", "dynamic_copies", "triplet_quality"]


def _combine(subject: Tensor, obj: Tensor, how: Combine) -> Tensor:
    if how == "min":
        return torch.minimum(subject, obj)
    if how == "max":
        return torch.maximum(subject, obj)
    if how == "gm":
        return (subject * obj).sqrt()
    return 0.5 * (subject + obj)


def triplet_quality(
    subject_boxes: Tensor,
    object_boxes: Tensor,
    predicate_probs: Tensor | None,
    targets: FlatTargets,
    *,
    combine: Combine,
    predicate_weight: float,
    allowed: Tensor | None = None,
) -> Tensor:
    """SpeaQ's quality of every query for every triplet of its image.

    Args:
        subject_boxes / object_boxes: [B, Q, 4] predicted cxcywh boxes in [0, 1].
        predicate_probs: [B, Q, T] probability of each triplet's predicate under each query
            (softmax over R + 1, background included), or None for no predicate term.
        targets: the relation targets (subject and object boxes cxcywh in [0, 1]).
        combine: how the subject and object IoUs are combined.
        predicate_weight: coefficient of the predicate term (SpeaQ's recipe: -0.5).
        allowed: bool [B, Q, T] group mask, or None.

    Returns:
        [B, Q, max(sizes)] qualities; columns past an image's size are padding.
    """
    index = targets.padded_index
    ious = []
    for pred, true in zip((subject_boxes, object_boxes), targets.boxes):
        iou, _ = box_iou(box_cxcywh_to_xyxy(pred.float()), box_cxcywh_to_xyxy(true[index]))
        iou = iou.nan_to_num(0.0)  # a zero-area pair has no overlap
        ious.append(iou if allowed is None else iou * allowed)
    quality = _combine(ious[0], ious[1], combine)
    if predicate_probs is not None and predicate_weight != 0:
        quality = quality + predicate_weight * predicate_probs
    return quality


def dynamic_copies(quality: Tensor, top_k: int) -> Tensor:
    """``max(1, floor(sum of the top_k qualities over queries))`` per triplet: int64 [B, T]."""
    k = min(top_k, quality.shape[1])
    return quality.topk(k, dim=1).values.sum(dim=1).floor().clamp(min=1).long()


class QualityAwareMatcher(HungarianMatcher):
    """Hungarian matcher with SpeaQ's one-to-many assignment and group mask (relation mode).

    Entity targets are matched one-to-one as by :class:`HungarianMatcher`.

    Args:
        scheme: ``none`` (one-to-one), ``static`` (``top_k`` copies each) or ``dynamic``.
        top_k: SpeaQ's ``ONE2MANY_K``.
        combine: SpeaQ's ``ONE2MANY_DYNAMIC_SCHEME``.
        predicate_weight: SpeaQ's ``ONE2MANY_PREDICATE_WEIGHT``; None = no predicate term
            (``ONE2MANY_PREDICATE_SCORE: false``).
        groups: predicate groups for the group mask (``USE_GROUP_MASK``), or None.
        cost_class / cost_bbox / cost_giou: as :class:`HungarianMatcher`.
    """

    def __init__(
        self,
        *,
        scheme: Scheme = "none",
        top_k: int = 4,
        combine: Combine = "max",
        predicate_weight: float | None = None,
        groups: PredicateGroups | None = None,
        **costs: float,
    ) -> None:
        super().__init__(**costs)
        if scheme not in ("none", "static", "dynamic") or combine not in ("min", "max", "gm", "am"):
            raise ValueError(f"unknown one-to-many scheme {scheme!r} or combination {combine!r}")
        if top_k < 1:
            raise ValueError(f"ONE2MANY_K must be >= 1, got {top_k}")
        self.scheme, self.top_k, self.combine = scheme, int(top_k), combine
        self.predicate_weight, self.groups = predicate_weight, groups

    def adjust_cost(
        self,
        outputs: dict[str, Tensor],
        flat: FlatTargets,
        spec: HeadSpec,
        cost: Tensor,
        log_probs: Sequence[Tensor] | None,
    ) -> tuple[Tensor, Tensor | None]:
        if spec is not RELATION_HEADS:
            return cost, None
        batch, queries = cost.shape[:2]
        allowed = None
        if self.groups is not None:
            if self.groups.query_group.numel() != queries:
                raise ValueError(
                    f"group mask for {self.groups.query_group.numel()} relation queries, the "
                    f"model has {queries}"
                )
            if self.groups.query_group.device != cost.device:  # once, not every forward
                self.groups = self.groups.on(cost.device)
            allowed = self.groups.allowed(flat.classes[0])[:, flat.padded_index].permute(1, 0, 2)
            cost = cost + GROUP_PENALTY * (~allowed).to(cost.dtype)
        if self.scheme == "none":
            return cost, None
        if self.scheme == "static":
            copies = torch.full_like(flat.padded_index, self.top_k)
        else:
            copies = dynamic_copies(self._quality(outputs, flat, allowed, log_probs), self.top_k)
        return cost, copies

    def _quality(
        self,
        outputs: dict[str, Tensor],
        flat: FlatTargets,
        allowed: Tensor | None,
        log_probs: Sequence[Tensor] | None,
    ) -> Tensor:
        probs = None
        if self.predicate_weight is not None:
            scores = (
                log_probs[0]
                if log_probs is not None
                else outputs[RELATION_HEADS.class_keys[0]].float().log_softmax(-1)
            )
            batch, queries = scores.shape[:2]
            columns = flat.classes[0][flat.padded_index][:, None, :].expand(batch, queries, -1)
            probs = scores.detach().gather(2, columns).exp()
        subject_key, object_key = RELATION_HEADS.box_keys
        return triplet_quality(
            outputs[subject_key].detach(),
            outputs[object_key].detach(),
            probs,
            flat,
            combine=self.combine,
            predicate_weight=self.predicate_weight or 0.0,
            allowed=allowed,
        )
