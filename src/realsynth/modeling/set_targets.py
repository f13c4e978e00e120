"""Batch targets flattened once per criterion call, shared by the matcher and every loss layer.

Relation mode turns each image's ``relations`` rows (subject index, object index, predicate) into
triplet targets: predicate, subject label/box = ``labels/boxes[subject index]``, object label/box =
``labels/boxes[object index]``. Entity mode uses ``labels``/``boxes`` directly. Boxes stay cxcywh,
normalized to [0, 1]. Class indices exclude the background, which is the LAST logit index.

Problems that can only be seen on the device (indices out of range, negative or NaN box sizes,
class ids out of range) are recorded per target in ``FlatTargets.problems`` instead of being
synced here; the matcher reads them together with its cost matrix, in its single transfer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from realsynth.modeling.heads import HeadSpec

PROBLEM_RELATION_INDEX = 1
PROBLEM_BOX = 2
PROBLEM_LABEL = 4
PROBLEM_NAMES = {
    PROBLEM_RELATION_INDEX: "relation subject/object index outside [0, num boxes)",
    PROBLEM_BOX: "box width/height negative or not finite",
    PROBLEM_LABEL: "class id outside [0, num classes)",
}


@dataclass(frozen=True)
class FlatTargets:
    """Targets of a whole batch, concatenated image after image (T targets in total).

    Attributes:
        sizes: number of targets per image (host ints, B entries).
        classes: one int64 [T] tensor per class head of the spec, clamped into range.
        boxes: one float [T, 4] cxcywh tensor per box head of the spec.
        padded_index: int64 [B, max(sizes)] flat target index per (image, slot); slots past an
            image's size repeat a valid index and are ignored by the matcher.
        problems: int32 [T] bit mask of PROBLEM_* flags, 0 for a valid target.
    """

    sizes: list[int]
    classes: tuple[Tensor, ...]
    boxes: tuple[Tensor, ...]
    padded_index: Tensor
    problems: Tensor

    @property
    def total(self) -> int:
        return sum(self.sizes)


def _check_shapes(position: int, target: dict[str, Any], need_relations: bool) -> None:
    for key in ("boxes", "labels") + (("relations",) if need_relations else ()):
        if key not in target:
            raise ValueError(f"targets[{position}] has no {key!r} key")
    boxes, labels = target["boxes"], target["labels"]
    if boxes.dim() != 2 or boxes.shape[1] != 4 or labels.shape != (boxes.shape[0],):
        raise ValueError(
            f"targets[{position}]: expected boxes [N, 4] and labels [N], got "
            f"{tuple(boxes.shape)} and {tuple(labels.shape)}"
        )
    if need_relations:
        relations = target["relations"]
        if relations.dim() != 2 or relations.shape[1] != 3:
            raise ValueError(
                f"targets[{position}]['relations']: expected [M, 3] (subject, object, predicate), "
                f"got {tuple(relations.shape)}"
            )
        if relations.shape[0] > 0 and boxes.shape[0] == 0:
            raise ValueError(f"targets[{position}] has relations but no boxes")


def _padded_index(sizes: list[int], device: torch.device) -> Tensor:
    width = max(sizes, default=0)
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    slots = np.minimum(np.arange(width)[None, :], np.maximum(np.array(sizes)[:, None] - 1, 0))
    # An empty last image would point one past the end: clamp onto any valid target.
    index = np.minimum(offsets[:, None] + slots, max(sum(sizes) - 1, 0))
    return torch.from_numpy(index).to(device, non_blocking=True)


def _box_problems(boxes: Tensor) -> Tensor:
    wh = boxes[:, 2:]
    ok = (wh >= 0).all(dim=1) & torch.isfinite(boxes).all(dim=1)
    return torch.where(ok, 0, PROBLEM_BOX).to(torch.int32)


def _label_problems(labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    ok = (labels >= 0) & (labels < num_classes)
    problems = torch.where(ok, 0, PROBLEM_LABEL).to(torch.int32)
    return labels.clamp(0, max(num_classes - 1, 0)), problems


def _relation_parts(
    targets: Sequence[dict[str, Any]], device: torch.device
) -> tuple[list[int], list[Tensor], list[Tensor], Tensor]:
    """Triplet classes (predicate, subject, object), boxes (subject, object) and problems."""
    box_counts = [int(t["boxes"].shape[0]) for t in targets]
    sizes = [int(t["relations"].shape[0]) for t in targets]
    labels = torch.cat([t["labels"].to(device) for t in targets]).long()
    boxes = torch.cat([t["boxes"].to(device) for t in targets]).float()
    relations = torch.cat([t["relations"].to(device) for t in targets]).long()
    box_offsets = np.concatenate(([0], np.cumsum(box_counts)[:-1])).astype(np.int64)
    per_triplet = np.stack(
        (np.repeat(box_offsets, sizes), np.repeat(np.array(box_counts, np.int64), sizes))
    )
    offset, count = torch.from_numpy(per_triplet).to(device, non_blocking=True)
    pair = relations[:, :2]
    pair_ok = ((pair >= 0) & (pair < count[:, None])).all(dim=1)
    flat_pair = torch.where(pair_ok[:, None], pair + offset[:, None], 0)
    problems = torch.where(pair_ok, 0, PROBLEM_RELATION_INDEX).to(torch.int32)
    box_problems = _box_problems(boxes) if boxes.shape[0] else boxes.new_zeros(0, dtype=torch.int32)
    subj, obj = flat_pair[:, 0], flat_pair[:, 1]
    if boxes.shape[0]:
        problems = problems | box_problems[subj] | box_problems[obj]
        classes = [relations[:, 2], labels[subj], labels[obj]]
        triplet_boxes = [boxes[subj], boxes[obj]]
    else:
        classes = [relations[:, 2], relations[:, 2], relations[:, 2]]
        triplet_boxes = [boxes, boxes]
    return sizes, classes, triplet_boxes, problems


def flatten_targets(
    targets: Sequence[dict[str, Any]],
    spec: HeadSpec,
    num_classes: Sequence[int],
    *,
    device: torch.device | str,
) -> FlatTargets:
    """Concatenate a batch's targets for ``spec`` (see the module docstring).

    Args:
        targets: one dict per image with ``boxes`` float [N, 4] (cxcywh, normalized), ``labels``
            int64 [N] and, in relation mode, ``relations`` int64 [M, 3].
        spec: :data:`RELATION_HEADS` or :data:`ENTITY_HEADS`.
        num_classes: foreground classes of each class head of ``spec`` (logits have one more, the
            background, last).
        device: device of the returned tensors.

    Returns:
        :class:`FlatTargets` with T = sum of M (relation) or N (entity) over the batch.
    """
    device = torch.device(device)
    if len(num_classes) != len(spec.class_keys):
        raise ValueError(f"need {len(spec.class_keys)} class counts, got {len(num_classes)}")
    relation = spec.mode == "relation"
    for position, target in enumerate(targets):
        _check_shapes(position, target, relation)
    if relation:
        sizes, classes, boxes, problems = _relation_parts(targets, device)
    else:
        sizes = [int(t["boxes"].shape[0]) for t in targets]
        classes = [torch.cat([t["labels"].to(device) for t in targets]).long()]
        boxes = [torch.cat([t["boxes"].to(device) for t in targets]).float()]
        problems = _box_problems(boxes[0])
    clamped = []
    for labels, count in zip(classes, num_classes):
        safe, label_problems = _label_problems(labels, count)
        clamped.append(safe)
        problems = problems | label_problems
    return FlatTargets(
        sizes=sizes,
        classes=tuple(clamped),
        boxes=tuple(boxes),
        padded_index=_padded_index(sizes, device),
        problems=problems,
    )
