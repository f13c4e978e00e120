"""Scene-graph Recall@K, no-graph-constraint Recall@K, mean Recall@K and zero-shot Recall@K.

Definitions follow Scene-Graph-Benchmark.pytorch (``sgg_eval.py``); matching lives in
``realsynth.evaluation.triplet_matching``. Per image with at least one ground-truth relation:

- ``R@K``: share of ground-truth triplets hit by the K best predicted triplets;
- ``ngR@K``: the same over the K best (pair, predicate) candidates, every predicate of every
  predicted subject-object pair competing, ranked by subject x object x predicate score;
- per predicate p present in the image: share of its ground-truth triplets hit in the top K.

Dataset ``R@K`` and ``ngR@K`` are means over images with ground truth (images without are
skipped); ``mR@K`` averages, over ALL predicates, the mean per-image recall of each predicate
over the images containing it (a predicate absent from the whole set counts as 0, as in SGB);
``zsR@K`` is the mean over images holding zero-shot ground truth of the share of those triplets
hit in the top K (graph constraint).

Protocols: ``sgb`` (the default of a run, ``TEST.PROTOCOL``) is SGB's: boxes in the original
image's pixels, SGB's integer-pixel IoU (+1 on widths and heights, float32), and an image with
ground truth but no predicted triplet is left out of every mean, as ``vg_eval.py`` returns early
for it. ``continuous`` compares boxes in any one frame with continuous IoU and counts such an
image as recall 0.

Each image becomes one row of numbers (``SceneGraphEvaluator.records``), so rows gathered from
several processes and summarized give exactly the single-process result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from realsynth.evaluation.triplet_matching import (
    ground_truth_triplets,
    hits_at_k,
    match_triplets,
    no_graph_constraint_triplets,
    ranked_triplets,
)

PROTOCOLS = ("sgb", "continuous")


class SceneGraphEvaluator:
    """Accumulates per-image recall records and summarizes them.

    Args:
        num_predicates: R, predicate classes (without background).
        ks: recall cut-offs, positive ints.
        zero_shot_triplets: optional (subject label, predicate, object label) triplets that never
            occur in training; enables ``zsR@K``.
        protocol: ``"sgb"`` or ``"continuous"`` (see the module docstring); with ``sgb`` boxes
            must be in pixels of the original image. No default: the two disagree on purpose.
        iou_threshold: minimum subject and object IoU for a hit.
    """

    def __init__(
        self,
        num_predicates: int,
        *,
        ks: Sequence[int] = (20, 50, 100),
        zero_shot_triplets: Iterable[Sequence[int]] | None = None,
        protocol: Literal["sgb", "continuous"],
        iou_threshold: float = 0.5,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"SceneGraphEvaluator: protocol must be one of {PROTOCOLS}, got {protocol!r}"
            )
        self.protocol = protocol
        if num_predicates < 1:
            raise ValueError(
                f"SceneGraphEvaluator: num_predicates must be >= 1, got {num_predicates}"
            )
        self.ks = tuple(int(k) for k in ks)
        if not self.ks or min(self.ks) < 1 or len(set(self.ks)) != len(self.ks):
            raise ValueError(f"SceneGraphEvaluator: ks must be distinct positive ints, got {ks!r}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(
                f"SceneGraphEvaluator: iou_threshold must be in (0, 1], got {iou_threshold}"
            )
        self.num_predicates = num_predicates
        self.iou_threshold = iou_threshold
        self.zero_shot = None
        if zero_shot_triplets is not None:
            zero_shot = np.asarray(list(zero_shot_triplets), dtype=np.int64).reshape(-1, 3)
            self.zero_shot = zero_shot
        nk, r = len(self.ks), num_predicates
        # Row layout: num_gt | hits[k] | ng_hits[k] | gt_per_predicate[r] | predicate_hits[k, r]
        # | zs_gt | zs_hits[k]; counts, not ratios, so gathered rows summarize exactly.
        sizes = {"num_gt": 1, "hits": nk, "ng_hits": nk, "gt_per_predicate": r}
        sizes.update({"predicate_hits": nk * r, "zs_gt": 1, "zs_hits": nk})
        self._slices: dict[str, slice] = {}
        start = 0
        for name, size in sizes.items():
            self._slices[name] = slice(start, start + size)
            start += size
        self.record_size = start
        self._rows: list[np.ndarray] = []

    @property
    def records(self) -> np.ndarray:
        """float64[N, record_size]: one row per image seen, images without ground truth included."""
        if not self._rows:
            return np.zeros((0, self.record_size))
        return np.stack(self._rows)

    def add_records(self, records: np.ndarray) -> None:
        """Append rows produced by another evaluator with the same settings (e.g. other ranks)."""
        records = np.asarray(records, dtype=np.float64)
        if records.ndim != 2 or records.shape[1] != self.record_size:
            raise ValueError(
                f"records must be [N, {self.record_size}] for ks={self.ks} and "
                f"num_predicates={self.num_predicates}, got shape {records.shape}"
            )
        self._rows.extend(records)

    def update(
        self, predictions: Sequence[Mapping[str, Any]], ground_truths: Sequence[Mapping[str, Any]]
    ) -> None:
        """Score one batch of images (formats in ``realsynth.evaluation.triplet_matching``)."""
        if len(predictions) != len(ground_truths):
            raise ValueError(
                f"update: {len(predictions)} predictions but {len(ground_truths)} ground truths"
            )
        for index, (prediction, truth) in enumerate(zip(predictions, ground_truths)):
            try:
                self._rows.append(self.image_record(prediction, truth))
            except ValueError as error:
                raise ValueError(f"image {index} of the batch: {error}") from error

    def image_record(self, prediction: Mapping[str, Any], truth: Mapping[str, Any]) -> np.ndarray:
        """float64[record_size] for one image (all zeros when it has no ground-truth relation)."""
        row = np.zeros(self.record_size)
        gt, gt_subject, gt_object = ground_truth_triplets(truth, self.num_predicates)
        if len(gt) == 0:
            return row
        pred, pred_subject, pred_object = ranked_triplets(prediction, self.num_predicates)
        if len(pred) == 0 and self.protocol == "sgb":
            return row  # vg_eval.py returns before recording anything for such an image
        inclusive = self.protocol == "sgb"
        hit = match_triplets(
            gt,
            gt_subject,
            gt_object,
            pred,
            pred_subject,
            pred_object,
            iou_threshold=self.iou_threshold,
            inclusive=inclusive,
        )
        hit_k = hits_at_k(hit, self.ks)
        ng, ng_subject, ng_object = no_graph_constraint_triplets(
            prediction, self.num_predicates, max(self.ks)
        )
        ng_hit = match_triplets(
            gt,
            gt_subject,
            gt_object,
            ng,
            ng_subject,
            ng_object,
            iou_threshold=self.iou_threshold,
            inclusive=inclusive,
        )
        predicates = gt[:, 1]
        r = self.num_predicates
        per_predicate = np.stack(
            [np.bincount(predicates, weights=h.astype(np.float64), minlength=r) for h in hit_k]
        )
        row[self._slices["num_gt"]] = len(gt)
        row[self._slices["hits"]] = hit_k.sum(axis=1)
        row[self._slices["ng_hits"]] = hits_at_k(ng_hit, self.ks).sum(axis=1)
        row[self._slices["gt_per_predicate"]] = np.bincount(predicates, minlength=r)
        row[self._slices["predicate_hits"]] = per_predicate.ravel()
        if self.zero_shot is not None:
            is_zero_shot = (gt[:, None, :] == self.zero_shot[None, :, :]).all(-1).any(-1)
            row[self._slices["zs_gt"]] = is_zero_shot.sum()
            row[self._slices["zs_hits"]] = hit_k[:, is_zero_shot].sum(axis=1)
        return row

    def _column(self, name: str, records: np.ndarray) -> np.ndarray:
        return records[:, self._slices[name]]

    def per_predicate_recall(self, records: np.ndarray | None = None) -> np.ndarray:
        """float64[len(ks), R]: each predicate's mean per-image recall; NaN if it never occurs.

        ``records``: rows to summarize instead of the accumulated ones (e.g. a bootstrap draw).
        """
        records = self.records if records is None else records
        counts = self._column("gt_per_predicate", records)
        hits = self._column("predicate_hits", records).reshape(
            -1, len(self.ks), self.num_predicates
        )
        present = counts > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(present[:, None, :], hits / np.maximum(counts, 1)[:, None, :], 0.0)
            return ratio.sum(axis=0) / present.sum(axis=0)[None, :]

    def summarize(self, records: np.ndarray | None = None) -> dict[str, float]:
        """``R@K``, ``ngR@K``, ``mR@K`` for every K (and ``zsR@K`` when zero-shot triplets were
        given and some image holds one), as fractions in [0, 1].

        ``records``: rows to summarize instead of the accumulated ones (e.g. a bootstrap draw).
        """
        records = self.records if records is None else records
        num_gt = self._column("num_gt", records)[:, 0]
        with_gt = records[num_gt > 0]
        if len(with_gt) == 0:
            raise ValueError(
                f"SceneGraphEvaluator.summarize: none of the {len(records)} images evaluated so "
                "far has a ground-truth relation"
            )
        totals = self._column("num_gt", with_gt)
        recall = (self._column("hits", with_gt) / totals).mean(axis=0)
        ng_recall = (self._column("ng_hits", with_gt) / totals).mean(axis=0)
        mean_recall = np.nan_to_num(self.per_predicate_recall(records), nan=0.0).mean(axis=1)
        results: dict[str, float] = {}
        for i, k in enumerate(self.ks):
            results[f"R@{k}"] = float(recall[i])
            results[f"ngR@{k}"] = float(ng_recall[i])
            results[f"mR@{k}"] = float(mean_recall[i])
        zs_gt = self._column("zs_gt", with_gt)[:, 0]
        if self.zero_shot is not None and (zs_gt > 0).any():
            zs = self._column("zs_hits", with_gt)[zs_gt > 0] / zs_gt[zs_gt > 0, None]
            for i, k in enumerate(self.ks):
                results[f"zsR@{k}"] = float(zs[:, i].mean())
        return results

    @property
    def num_images(self) -> int:
        """Images with at least one ground-truth relation (the ones that count)."""
        return int((self._column("num_gt", self.records)[:, 0] > 0).sum())
