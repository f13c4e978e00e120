"""Per-image scene-graph matching with Scene-Graph-Benchmark's definitions (``sgg_eval.py``).

A predicted triplet hits a ground-truth triplet when subject label, predicate and object label
agree and the subject boxes and the object boxes each have IoU >= the threshold (0.5). One
prediction may hit several ground-truth triplets, and a ground-truth triplet counts once however
many predictions hit it. IoU is SGB's integer-pixel IoU (``pixel_box_iou``: +1 on widths and
heights, float32) with ``inclusive=True``, else continuous (``inter / union``, float64).

Inputs are numpy arrays, boxes xyxy in one frame for both sides (pixels or normalized):

- prediction: ``subject_boxes``/``object_boxes`` [P, 4], ``subject_labels``/``object_labels``/
  ``predicates`` int [P], ``scores`` [P]; for no-graph-constraint recall also
  ``pair_subject_boxes``/``pair_object_boxes`` [Q, 4], ``pair_subject_labels``/
  ``pair_object_labels`` int [Q], ``pair_scores`` [Q] and ``pair_predicate_scores`` [Q, R]
  (what ``realsynth.modeling.postprocess.relation_predictions`` returns);
- ground truth: ``boxes`` [N, 4], ``labels`` int [N], ``relations`` int [M, 3] (subject index,
  object index, predicate), predicates in [0, R) (no background entry).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from realsynth.utils.box_ops import box_iou, pixel_box_iou

RANKED_KEYS = ("subject_boxes", "object_boxes", "subject_labels", "object_labels", "predicates")
PAIR_KEYS = (
    "pair_subject_boxes",
    "pair_object_boxes",
    "pair_subject_labels",
    "pair_object_labels",
    "pair_scores",
    "pair_predicate_scores",
)


def _iou(boxes1: np.ndarray, boxes2: np.ndarray, inclusive: bool) -> np.ndarray:
    """[N, M] IoU of xyxy boxes; zero-area pairs give 0 instead of NaN."""
    if inclusive:
        iou = pixel_box_iou(
            torch.from_numpy(np.asarray(boxes1, dtype=np.float32).reshape(-1, 4)),
            torch.from_numpy(np.asarray(boxes2, dtype=np.float32).reshape(-1, 4)),
        )
        return np.nan_to_num(iou.numpy(), nan=0.0)
    iou, _ = box_iou(
        torch.from_numpy(np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)),
        torch.from_numpy(np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)),
    )
    return np.nan_to_num(iou.numpy(), nan=0.0)


def match_triplets(
    gt_triplets: np.ndarray,
    gt_subject_boxes: np.ndarray,
    gt_object_boxes: np.ndarray,
    pred_triplets: np.ndarray,
    pred_subject_boxes: np.ndarray,
    pred_object_boxes: np.ndarray,
    *,
    iou_threshold: float = 0.5,
    inclusive: bool = False,
) -> np.ndarray:
    """Which prediction hits which ground-truth triplet.

    Args:
        gt_triplets: int[G, 3] (subject label, predicate, object label).
        gt_subject_boxes, gt_object_boxes: float[G, 4] xyxy.
        pred_triplets: int[P, 3] (subject label, predicate, object label).
        pred_subject_boxes, pred_object_boxes: float[P, 4] xyxy, same frame as the ground truth.
        iou_threshold: minimum IoU for the subject and for the object box.
        inclusive: SGB's integer-pixel IoU (boxes in pixels) instead of the continuous one.

    Returns:
        bool[G, P]: entry (g, p) is True when prediction p hits ground-truth triplet g.
    """
    gt_triplets = np.asarray(gt_triplets).reshape(-1, 3)
    pred_triplets = np.asarray(pred_triplets).reshape(-1, 3)
    same_labels = (gt_triplets[:, None, :] == pred_triplets[None, :, :]).all(-1)
    if not same_labels.any():
        return same_labels
    subject_ok = _iou(gt_subject_boxes, pred_subject_boxes, inclusive) >= iou_threshold
    object_ok = _iou(gt_object_boxes, pred_object_boxes, inclusive) >= iou_threshold
    return same_labels & subject_ok & object_ok


def ground_truth_triplets(
    ground_truth: Mapping[str, Any], num_predicates: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expand a ground-truth graph into triplets.

    Args:
        ground_truth: ``boxes`` [N, 4] xyxy, ``labels`` int[N], ``relations`` int[M, 3].
        num_predicates: R; predicates must lie in [0, R).

    Returns:
        (triplets int64[M, 3] (subject label, predicate, object label), subject boxes float[M, 4],
        object boxes float[M, 4]).
    """
    for key in ("boxes", "labels", "relations"):
        if key not in ground_truth:
            raise ValueError(f"ground truth lacks key {key!r}")
    boxes = np.asarray(ground_truth["boxes"], dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(ground_truth["labels"], dtype=np.int64).reshape(-1)
    relations = np.asarray(ground_truth["relations"], dtype=np.int64).reshape(-1, 3)
    if len(boxes) != len(labels):
        raise ValueError(f"ground truth has {len(boxes)} boxes but {len(labels)} labels")
    if relations.size and (relations[:, :2].min() < 0 or relations[:, :2].max() >= len(labels)):
        raise ValueError(
            f"ground-truth relations index objects outside [0, {len(labels)}): {relations.tolist()}"
        )
    if relations.size and (relations[:, 2].min() < 0 or relations[:, 2].max() >= num_predicates):
        raise ValueError(
            f"ground-truth predicates must lie in [0, {num_predicates}), "
            f"got {relations[:, 2].tolist()}"
        )
    subject, obj, predicate = relations[:, 0], relations[:, 1], relations[:, 2]
    triplets = np.stack((labels[subject], predicate, labels[obj]), axis=1)
    return triplets, boxes[subject], boxes[obj]


def ranked_triplets(
    prediction: Mapping[str, Any], num_predicates: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A prediction's triplets in descending score order (stable for ties).

    Returns:
        (triplets int64[P, 3] (subject label, predicate, object label), subject boxes float[P, 4],
        object boxes float[P, 4]).
    """
    _require(prediction, (*RANKED_KEYS, "scores"))
    scores = np.asarray(prediction["scores"], dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    triplets = np.stack(
        [
            np.asarray(prediction[key], dtype=np.int64).reshape(-1)
            for key in ("subject_labels", "predicates", "object_labels")
        ],
        axis=1,
    )
    if len(triplets) != len(scores):
        raise ValueError(f"prediction has {len(scores)} scores but {len(triplets)} triplets")
    _check_predicates(triplets[:, 1], num_predicates)
    subject_boxes = np.asarray(prediction["subject_boxes"], dtype=np.float64).reshape(-1, 4)
    object_boxes = np.asarray(prediction["object_boxes"], dtype=np.float64).reshape(-1, 4)
    return triplets[order], subject_boxes[order], object_boxes[order]


def no_graph_constraint_triplets(
    prediction: Mapping[str, Any], num_predicates: int, max_k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``max_k`` best (pair, predicate) candidates, ranked by subject x object x predicate.

    Every predicate of every subject-object pair is a candidate (SGB's ``SGNoGraphConstraint-
    Recall``), so one pair may contribute several triplets.

    Returns:
        (triplets int64[K, 3], subject boxes float[K, 4], object boxes float[K, 4]), K <= max_k.
    """
    _require(prediction, PAIR_KEYS)
    predicate_scores = np.asarray(prediction["pair_predicate_scores"], dtype=np.float64)
    if predicate_scores.ndim != 2 or predicate_scores.shape[1] != num_predicates:
        raise ValueError(
            f"pair_predicate_scores must be [Q, {num_predicates}], got {predicate_scores.shape}"
        )
    pair_scores = np.asarray(prediction["pair_scores"], dtype=np.float64).reshape(-1, 1)
    overall = (pair_scores * predicate_scores).ravel()
    order = np.argsort(-overall, kind="stable")[:max_k]
    pair, predicate = np.divmod(order, num_predicates)
    subject_labels = np.asarray(prediction["pair_subject_labels"], dtype=np.int64).reshape(-1)
    object_labels = np.asarray(prediction["pair_object_labels"], dtype=np.int64).reshape(-1)
    triplets = np.stack((subject_labels[pair], predicate, object_labels[pair]), axis=1)
    subject_boxes = np.asarray(prediction["pair_subject_boxes"], dtype=np.float64).reshape(-1, 4)
    object_boxes = np.asarray(prediction["pair_object_boxes"], dtype=np.float64).reshape(-1, 4)
    return triplets, subject_boxes[pair], object_boxes[pair]


def hits_at_k(hit: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """bool[len(ks), G]: ground-truth triplet g is hit by one of the top-k predictions.

    Args:
        hit: bool[G, P] from ``match_triplets``, predictions in rank order.
        ks: cut-offs.
    """
    return np.stack([hit[:, :k].any(axis=1) for k in ks])


def _require(mapping: Mapping[str, Any], keys: Sequence[str]) -> None:
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise ValueError(f"prediction lacks key(s) {missing}")


def _check_predicates(predicates: np.ndarray, num_predicates: int) -> None:
    if predicates.size and (predicates.min() < 0 or predicates.max() >= num_predicates):
        raise ValueError(
            f"predicted predicates must lie in [0, {num_predicates}) (no background entry), "
            f"got values in [{predicates.min()}, {predicates.max()}]"
        )
