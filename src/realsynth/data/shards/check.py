"""``realsynth data check`` on a sharded source: every sample, or a seeded fraction of them.

Each checked sample must have an annotation the reader accepts and an image that decodes at its
annotated size; labels, predicates and relation endpoints must be in range and boxes inside the
image. The index's label counts are checked against the samples when every sample is read.
"""

from __future__ import annotations

import numpy as np
import torch

from realsynth.data.images import BadSampleError, decode_image
from realsynth.data.problems import Findings
from realsynth.data.shards.dataset import ShardedDataset


def check_shards(location: str, *, fraction: float = 1.0, seed: int = 0, images: bool = True):
    """Checks the samples of the shard folder or URL ``location``.

    Args:
        location: the shard folder or its ``index.json`` (path or URL).
        fraction: share of the samples read, in (0, 1] (drawn with ``seed``, whole shards kept
            together so that a remote check downloads only the shards it reads).
        seed: the draw of a partial check.
        images: decode every checked image (False: annotations only).

    Returns:
        a :class:`~realsynth.data.check.CheckReport`.

    Raises:
        ValueError: ``fraction`` out of range, or ``location`` is no shard index.
    """
    from realsynth.data.check import CheckReport, count_names

    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"--fraction must be in (0, 1], got {fraction}")
    dataset = ShardedDataset(location)
    report = CheckReport(path=dataset.index.location, format="shards")
    report.num_images = len(dataset)
    objects, relations = dataset.label_counts()
    report.num_objects, report.num_relations = int(objects.sum()), int(relations.sum())
    report.class_counts = count_names(dict(enumerate(objects.tolist())), dataset.classes)
    report.predicate_counts = count_names(dict(enumerate(relations.tolist())), dataset.predicates)
    shards = _chosen_shards(len(dataset.shard_sizes), fraction, seed)
    seen_objects = np.zeros_like(objects)
    seen_relations = np.zeros_like(relations)
    starts = dataset.index.starts
    for shard in shards.tolist():
        for index in range(int(starts[shard]), int(starts[shard + 1])):
            ann = _check_sample(dataset, index, report.findings, images)
            if ann is not None:
                seen_objects += np.bincount(ann["labels"].numpy(), minlength=len(objects))[
                    : len(objects)
                ]
                seen_relations += np.bincount(
                    ann["relations"][:, 2].numpy(), minlength=len(relations)
                )[: len(relations)]
    if len(shards) == len(dataset.shard_sizes) and not report.findings.errors:
        for what, counted, indexed in (
            ("object", seen_objects, objects),
            ("relation", seen_relations, relations),
        ):
            if not np.array_equal(counted, indexed):
                report.findings.error(
                    "label_counts",
                    dataset.index.location,
                    f"the index's {what} counts ({int(indexed.sum())}) disagree with the "
                    f"samples' ({int(counted.sum())})",
                )
    return report


def _chosen_shards(num_shards: int, fraction: float, seed: int) -> np.ndarray:
    if fraction >= 1.0:
        return np.arange(num_shards)
    count = max(1, round(fraction * num_shards))
    return np.sort(np.random.default_rng(seed).choice(num_shards, size=count, replace=False))


def _check_sample(dataset: ShardedDataset, index: int, findings: Findings, images: bool):
    """The annotation of sample ``index`` when it passes, else None (its problems recorded)."""
    where = f"item {index}"
    try:
        ann = dataset.annotation(index)
        where = str(dataset.image_path(index))
    except (ValueError, OSError) as exc:
        findings.error("bad_sample", where, str(exc), image=index)
        return None
    height, width = (int(v) for v in ann["orig_size"])
    # VG150's boxes may reach past its images (its loader rescales and clips them): not an error.
    bounds = None if dataset.rescale_on_size_mismatch else (width, height)
    problems = _annotation_problems(ann, len(dataset.classes), len(dataset.predicates), bounds)
    for code, message in problems:
        findings.error(code, where, message, image=index)
    if images:
        try:
            _, size = decode_image(dataset.image_file(index), source=dataset.source, name=where)
        except BadSampleError as exc:
            findings.error("unreadable_image", where, str(exc).split(": ", 1)[-1], image=index)
            return None
        if size != (width, height) and not dataset.rescale_on_size_mismatch:
            findings.error(
                "size_mismatch",
                where,
                f"the image is {size[0]}x{size[1]} (w x h); its annotation says {width}x{height}",
                image=index,
            )
    return None if problems else ann


def _annotation_problems(
    ann: dict, classes: int, predicates: int, bounds: tuple[int, int] | None
) -> list[tuple[str, str]]:
    """(code, message) of each problem of one annotation; boxes must lie inside ``bounds``
    (width, height) unless it is None."""
    boxes: torch.Tensor = ann["boxes"]
    labels: torch.Tensor = ann["labels"]
    relations: torch.Tensor = ann["relations"]
    problems = []
    if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
        problems.append(("bad_label", f"labels must be in [0, {classes})"))
    if relations.numel():
        if relations[:, 2].min() < 0 or relations[:, 2].max() >= predicates:
            problems.append(("bad_predicate", f"predicates must be in [0, {predicates})"))
        if relations[:, :2].min() < 0 or relations[:, :2].max() >= len(labels):
            problems.append(("bad_relation", f"a relation names a box outside [0, {len(labels)})"))
    if boxes.numel() and bool((boxes[:, 2:] < boxes[:, :2]).any()):
        problems.append(("bad_box", "a box ends before it starts (x1 < x0 or y1 < y0)"))
    elif boxes.numel() and bounds is not None:
        width, height = bounds
        inside = (boxes[:, :2] >= 0).all(1) & (boxes[:, 2] <= width) & (boxes[:, 3] <= height)
        if not bool(inside.all()):
            problems.append(("bad_box", f"a box is not inside the {width}x{height} image"))
    return problems
