"""Hungarian matching of predictions to targets, for relation triplets and for entities.

Matching never sees the per-image loss weights: weights change how much a matched pair counts,
not which query is matched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from realsynth.modeling.heads import BBOX_COEFFICIENT, CLASS_COEFFICIENT, GIOU_COEFFICIENT, HeadSpec
from realsynth.modeling.set_targets import PROBLEM_NAMES, FlatTargets
from realsynth.utils.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

Assignment = list[tuple[np.ndarray, np.ndarray]]


def foreground_classes(outputs: dict[str, Any], spec: HeadSpec) -> list[int]:
    """Foreground class count of each class head (logit width minus the last, background, index)."""
    return [int(outputs[key].shape[-1]) - 1 for key in spec.class_keys]


class HungarianMatcher:
    """One-to-one assignment between queries and targets minimizing DETR's matching cost.

    Cost of query q against target t: ``cost_class * sum_h -softmax(logits_h)[q, class_h(t)]``
    over the class heads (relation: predicate, subject, object; entity: class), plus
    ``cost_bbox * sum_h L1(box_h(q), box_h(t))`` and ``cost_giou * sum_h -GIoU(box_h(q), box_h(t))``
    over the box heads (relation: subject, object; entity: box). Boxes are cxcywh in [0, 1].

    The cost of every image is built in one batched pass over targets padded to the largest image,
    moved to the host once, then solved per image with ``scipy.optimize.linear_sum_assignment``.

    Args:
        cost_class: weight of the classification cost.
        cost_bbox: weight of the L1 box cost.
        cost_giou: weight of the GIoU cost.
    """

    def __init__(
        self,
        cost_class: float = CLASS_COEFFICIENT,
        cost_bbox: float = BBOX_COEFFICIENT,
        cost_giou: float = GIOU_COEFFICIENT,
    ):
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0, matching would be arbitrary")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    def cost_matrix(
        self,
        outputs: dict[str, Tensor],
        flat: FlatTargets,
        spec: HeadSpec,
        log_probs: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Matching cost [B, Q, max(sizes)]; column j of image b is its target j (padding after).

        ``log_probs`` (one [B, Q, K+1] log-softmax per class head) lets a caller that needs them
        for its own loss share them instead of computing the softmax twice.
        """
        index = flat.padded_index
        batch, queries = outputs[spec.class_keys[0]].shape[:2]
        if log_probs is None:
            log_probs = [outputs[key].float().log_softmax(-1) for key in spec.class_keys]
        cost = None
        for scores, classes in zip(log_probs, flat.classes):
            columns = classes[index][:, None, :].expand(batch, queries, -1)
            # exp of the gathered [B, Q, T] log-probabilities: softmax without a [B, Q, K+1] write.
            term = scores.detach().gather(2, columns).exp()
            cost = term if cost is None else cost + term
        cost = -self.cost_class * cost
        for key, boxes in zip(spec.box_keys, flat.boxes):
            pred = outputs[key].float()
            tgt = boxes[index]
            l1 = torch.cdist(pred, tgt, p=1)
            giou = generalized_box_iou(
                box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt), check=False
            )
            cost = cost + self.cost_bbox * l1 - self.cost_giou * giou
        return cost

    @torch.no_grad()
    def assign(
        self,
        outputs: dict[str, Tensor],
        flat: FlatTargets,
        spec: HeadSpec,
        log_probs: Sequence[Tensor] | None = None,
        *,
        extra_layers: Sequence[dict[str, Tensor]] = (),
    ) -> Assignment:
        """Match with pre-flattened targets; returns per image (query indices, target indices).

        ``log_probs``: optional precomputed log-softmax per class head (see :meth:`cost_matrix`).
        ``extra_layers``: other decoder layers whose costs are added to ``outputs``' (one shared
        matching, IterativeSG's); a subclass's adjustments use ``outputs`` only.

        Raises:
            ValueError: an image has more targets than queries, a target is invalid (see
                ``set_targets.PROBLEM_NAMES``), or the predictions hold NaN/inf.
        """
        queries = outputs[spec.class_keys[0]].shape[1]
        too_many = [b for b, n in enumerate(flat.sizes) if n > queries]
        if too_many:
            raise ValueError(
                f"images {too_many} have {[flat.sizes[b] for b in too_many]} {spec.mode} targets "
                f"but the model has only {queries} queries per image"
            )
        empty = np.zeros(0, dtype=np.int64)
        if flat.total == 0:
            return [(empty, empty) for _ in flat.sizes]
        cost = self.cost_matrix(outputs, flat, spec, log_probs)
        for layer in extra_layers:
            cost = cost + self.cost_matrix(layer, flat, spec)
        cost, copies = self.adjust_cost(outputs, flat, spec, cost, log_probs)
        cost_np, copies_np = self._to_host(cost, copies, flat, spec)
        result: Assignment = []
        for b, size in enumerate(flat.sizes):
            block = cost_np[b, :, :size]
            if not np.isfinite(block).all():
                raise ValueError(
                    f"matcher: NaN or inf in the {spec.mode} predictions of image {b} "
                    f"(keys {spec.class_keys + spec.box_keys})"
                )
            if not size:
                result.append((empty, empty))
            elif copies_np is None:
                rows, cols = linear_sum_assignment(block)
                result.append((rows.astype(np.int64), cols.astype(np.int64)))
            else:
                result.append(assign_copies(block, copies_np[b, :size]))
        return result

    def _to_host(
        self, cost: Tensor, copies: Tensor | None, flat: FlatTargets, spec: HeadSpec
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One transfer of the cost, the targets' problem flags and (one-to-many) the copies;
        raises on invalid targets."""
        parts = [cost.reshape(-1), flat.problems.to(cost.dtype)]
        if copies is not None:
            parts.append(copies.reshape(-1).to(cost.dtype))
        packed = torch.cat(parts).cpu().numpy()
        cost_np = packed[: cost.numel()].reshape(cost.shape)
        problems = packed[cost.numel() : cost.numel() + flat.total].astype(np.int64)
        self._raise_on_problems(problems, flat, spec)
        if copies is None:
            return cost_np, None
        return cost_np, packed[cost.numel() + flat.total :].reshape(cost.shape[0], -1).astype(
            np.int64
        )

    def adjust_cost(
        self,
        outputs: dict[str, Tensor],
        flat: FlatTargets,
        spec: HeadSpec,
        cost: Tensor,
        log_probs: Sequence[Tensor] | None,
    ) -> tuple[Tensor, Tensor | None]:
        """A subclass's hook: change the cost [B, Q, max(sizes)] and return the copies of each
        target [B, max(sizes)] for one-to-many matching (None: one-to-one)."""
        return cost, None

    @staticmethod
    def _raise_on_problems(problems: np.ndarray, flat: FlatTargets, spec: HeadSpec) -> None:
        bad = np.flatnonzero(problems)
        if bad.size == 0:
            return
        image_of = np.repeat(np.arange(len(flat.sizes)), flat.sizes)
        starts = np.concatenate(([0], np.cumsum(flat.sizes)[:-1]))
        details = []
        for i in bad[:10]:
            what = [name for bit, name in PROBLEM_NAMES.items() if problems[i] & bit]
            b = int(image_of[i])
            details.append(f"image {b} {spec.mode} target {int(i - starts[b])}: {', '.join(what)}")
        more = f" (and {bad.size - 10} more)" if bad.size > 10 else ""
        raise ValueError("invalid targets: " + "; ".join(details) + more)


def assign_copies(cost: np.ndarray, copies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-many assignment: target j repeated ``copies[j]`` times, then Hungarian matching.

    When the copies exceed the Q queries, the largest is lowered by one (the first of equals)
    until they fit, so that every target is matched at least once.

    Args:
        cost: [Q, T] matching cost of one image, T <= Q.
        copies: int64 [T], each >= 1.

    Returns:
        (query indices, target indices) of the matched pairs; target j appears ``copies[j]``
        times (after the cap), a query at most once.
    """
    copies = np.maximum(copies.astype(np.int64), 1)
    while copies.sum() > cost.shape[0]:
        copies[np.argmax(copies)] -= 1  # the first of the largest; never below 1 as T <= Q
    columns = np.repeat(np.arange(cost.shape[1]), copies)
    rows, cols = linear_sum_assignment(cost[:, columns])
    return rows.astype(np.int64), columns[cols].astype(np.int64)
