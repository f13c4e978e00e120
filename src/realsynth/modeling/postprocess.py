"""Model outputs -> ranked triplets per image, and targets -> evaluation ground truth.

Both produce plain numpy arrays with xyxy boxes in one coordinate frame (pixels when image sizes
are given, else normalized to [0, 1]), the input format of ``realsynth.evaluation.recall``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from realsynth.modeling.heads import RELATION_HEADS
from realsynth.utils.box_ops import box_cxcywh_to_xyxy, box_iou


@torch.no_grad()
def relation_predictions(
    outputs: dict[str, Any],
    image_sizes: Tensor | None,
    *,
    top_k: int = 100,
    predicates_per_query: int = 1,
    duplicate_iou: float = 1.0,
) -> list[dict[str, np.ndarray]]:
    """Rank each image's triplets by predicate x subject x object probability.

    Probabilities are softmaxes over the full logits; the background entry (LAST index) is
    dropped afterwards, so a query that is confident there is no relation scores low. Each
    subject/object slot takes its best non-background class; each query contributes its
    ``predicates_per_query`` best predicates. A triplet whose three labels equal those of a
    higher-scored kept triplet and whose subject and object boxes both have IoU >=
    ``duplicate_iou`` with it is a duplicate and is dropped (1.0: identical boxes only).

    Args:
        outputs: model outputs with ``relation_logits`` [B, Q, R+1], ``relation_subject_logits``
            and ``relation_object_logits`` [B, Q, C+1], ``relation_subject_boxes`` and
            ``relation_object_boxes`` [B, Q, 4] (cxcywh normalized).
        image_sizes: int[B, 2] (h, w) to scale boxes to pixels, or ``None`` for normalized boxes.
        top_k: triplets kept per image after duplicate removal.
        predicates_per_query: predicate candidates per query. 1 keeps Scene-Graph-Benchmark's
            graph constraint (one predicate per subject-object pair); larger values relax it.
        duplicate_iou: IoU in (0, 1] above which same-label triplets count as duplicates.

    Returns:
        one dict per image, numpy arrays: ``subject_boxes`` / ``object_boxes`` float32[K, 4] xyxy,
        ``subject_labels`` / ``object_labels`` / ``predicates`` int64[K], ``scores`` float32[K]
        sorted descending (K <= top_k); and, per query for no-graph-constraint recall,
        ``pair_subject_boxes`` / ``pair_object_boxes`` float32[Q, 4] xyxy,
        ``pair_subject_labels`` / ``pair_object_labels`` int64[Q], ``pair_scores`` float32[Q]
        (subject x object probability) and ``pair_predicate_scores`` float32[Q, R].
    """
    _check_options(top_k, predicates_per_query, duplicate_iou)
    pairs = _pair_predictions(outputs, image_sizes)
    num_predicates = pairs["pair_predicate_scores"].shape[-1]
    per_query = min(predicates_per_query, num_predicates)
    results = []
    for b in range(pairs["pair_scores"].shape[0]):
        image = {key: value[b] for key, value in pairs.items()}
        triplet_scores = image["pair_scores"][:, None] * image["pair_predicate_scores"]
        scores, predicates = triplet_scores.topk(per_query, dim=1)
        query = torch.arange(scores.shape[0]).repeat_interleave(per_query)
        order = scores.flatten().argsort(descending=True, stable=True)
        query, predicates, scores = (
            query[order],
            predicates.flatten()[order],
            scores.flatten()[order],
        )
        keep = _unique_triplets(image, query, predicates, duplicate_iou, top_k)
        query, predicates, scores = query[keep], predicates[keep], scores[keep]
        ranked = {
            "subject_boxes": image["pair_subject_boxes"][query],
            "object_boxes": image["pair_object_boxes"][query],
            "subject_labels": image["pair_subject_labels"][query],
            "object_labels": image["pair_object_labels"][query],
            "predicates": predicates,
            "scores": scores,
        }
        results.append({key: value.numpy() for key, value in {**ranked, **image}.items()})
    return results


def _check_options(top_k: int, predicates_per_query: int, duplicate_iou: float) -> None:
    if top_k < 1:
        raise ValueError(f"relation_predictions: top_k must be >= 1, got {top_k}")
    if predicates_per_query < 1:
        raise ValueError(
            f"relation_predictions: predicates_per_query must be >= 1, got {predicates_per_query}"
        )
    if not 0.0 < duplicate_iou <= 1.0:
        raise ValueError(
            f"relation_predictions: duplicate_iou must be in (0, 1], got {duplicate_iou}"
        )


def _pair_predictions(outputs: dict[str, Any], image_sizes: Tensor | None) -> dict[str, Tensor]:
    """Per-query subject/object classes and boxes, CPU float32 tensors with a batch dimension."""
    keys = RELATION_HEADS.output_keys  # relation, subject, object logits; subject, object boxes
    missing = [key for key in keys if key not in outputs]
    if missing:
        raise ValueError(f"relation_predictions: model outputs lack key(s) {missing}")
    rel, subj, obj, subj_box, obj_box = (outputs[key].detach().float().cpu() for key in keys)
    subject_scores, subject_labels = subj.softmax(-1)[..., :-1].max(-1)
    object_scores, object_labels = obj.softmax(-1)[..., :-1].max(-1)
    scale = _box_scale(image_sizes, rel.shape[0])
    return {
        "pair_subject_boxes": box_cxcywh_to_xyxy(subj_box) * scale,
        "pair_object_boxes": box_cxcywh_to_xyxy(obj_box) * scale,
        "pair_subject_labels": subject_labels,
        "pair_object_labels": object_labels,
        "pair_scores": subject_scores * object_scores,
        "pair_predicate_scores": rel.softmax(-1)[..., :-1],
    }


def _box_scale(image_sizes: Tensor | None, batch: int) -> Tensor:
    """float[B, 1, 4] multiplier (w, h, w, h) turning normalized xyxy into pixels."""
    if image_sizes is None:
        return torch.ones(batch, 1, 4)
    sizes = torch.as_tensor(image_sizes).detach().float().cpu()
    if sizes.shape != (batch, 2):
        raise ValueError(
            f"image_sizes must be [B, 2] (h, w) with B={batch}, got shape {tuple(sizes.shape)}"
        )
    height, width = sizes[:, 0], sizes[:, 1]
    return torch.stack((width, height, width, height), dim=1)[:, None, :]


def _unique_triplets(
    image: dict[str, Tensor], query: Tensor, predicates: Tensor, duplicate_iou: float, top_k: int
) -> Tensor:
    """Positions (into the ranked candidates) of the first ``top_k`` non-duplicate triplets.

    Pairwise comparisons cover a window of the best candidates that grows only when duplicates
    leave fewer than ``top_k`` survivors, so the cost stays O(top_k^2) in the usual case.
    """
    total = int(query.shape[0])
    limit = min(total, 2 * top_k)
    while True:
        window_query, window_predicates = query[:limit], predicates[:limit]
        labels = torch.stack(
            (
                image["pair_subject_labels"][window_query],
                window_predicates,
                image["pair_object_labels"][window_query],
            ),
            dim=1,
        )
        duplicate_of = (
            (labels[:, None, :] == labels[None, :, :]).all(-1)
            & _same_box(image["pair_subject_boxes"][window_query], duplicate_iou)
            & _same_box(image["pair_object_boxes"][window_query], duplicate_iou)
        ).numpy()
        kept: list[int] = []
        for i in range(limit):
            if len(kept) == top_k:
                break
            if not duplicate_of[i, kept].any():
                kept.append(i)
        if len(kept) == top_k or limit == total:
            return torch.tensor(kept, dtype=torch.int64)
        limit = min(total, 2 * limit)


def _same_box(boxes: Tensor, threshold: float) -> Tensor:
    """bool[N, N]: boxes identical, or overlapping with IoU >= threshold."""
    identical = (boxes[:, None, :] == boxes[None, :, :]).all(-1)
    iou, _ = box_iou(boxes, boxes)
    # Degenerate (zero-area) boxes give NaN IoU, which compares False: only identity matches.
    return identical | (iou >= threshold)


def ground_truth_from_target(target: dict[str, Any], *, pixels: bool) -> dict[str, np.ndarray]:
    """Convert a dataset target to the ground-truth format of ``realsynth.evaluation.recall``.

    Args:
        target: dict with ``boxes`` float[N, 4] cxcywh normalized (or, with ``pixels``,
            ``eval_boxes`` float[N, 4] xyxy in pixels of the annotated image), ``labels`` int[N]
            and ``relations`` int[M, 3] (subject index, object index, predicate).
        pixels: the boxes of the annotated frame (SGB's protocol; pair with predictions scaled
            by ``eval_size``), else normalized xyxy.

    Returns:
        ``boxes`` float32[N, 4] xyxy, ``labels`` int64[N], ``relations`` int64[M, 3].
    """
    needed = ("eval_boxes" if pixels else "boxes", "labels", "relations")
    for key in needed:
        if key not in target:
            raise ValueError(f"ground_truth_from_target: target lacks key {key!r}")
    if pixels:
        boxes = torch.as_tensor(target["eval_boxes"]).detach().float().cpu().reshape(-1, 4)
    else:
        boxes = box_cxcywh_to_xyxy(torch.as_tensor(target["boxes"]).detach().float().cpu())
    return {
        "boxes": boxes.reshape(-1, 4).numpy(),
        "labels": torch.as_tensor(target["labels"]).detach().cpu().long().numpy(),
        "relations": torch.as_tensor(target["relations"])
        .detach()
        .cpu()
        .long()
        .reshape(-1, 3)
        .numpy(),
    }
