"""Batch targets flattened once per criterion call, shared by the matcher and every loss layer.

Relation mode turns each image's ``relations`` rows (subject index, object index, predicate) into
triplet targets: predicate, subject label/box = ``labels/boxes[subject index]``, object label/box =
``labels/boxes[object index]``. Entity mode uses ``labels``/``boxes`` directly. Boxes stay cxcywh,
normalized to [0, 1]. Class indices exclude the background, which is the LAST logit index.

Per-instance trust (optional target keys): ``box_weights`` float [N] and ``box_ignore`` bool [N]
per box, ``relation_weights`` float [M] and ``relation_ignore`` bool [M] per relation. A target's
instance weight is, in relation mode, its relation's weight times its subject's and its object's
box weights, and it is ignored when its relation or either box is; in entity mode the box's.
Without any of these keys ``instance_weights`` and ``ignored`` are None (and nothing changes).

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
PROBLEM_WEIGHT = 8
PROBLEM_NAMES = {
    PROBLEM_RELATION_INDEX: "relation subject/object index outside [0, num boxes)",
    PROBLEM_BOX: "box width/height negative or not finite",
    PROBLEM_LABEL: "class id outside [0, num classes)",
    PROBLEM_WEIGHT: "instance loss weight negative or not finite",
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
        instance_weights: float32 [T] per-target weights, or None (all 1).
        ignored: bool [T] targets matched but counted in no term, or None (none).
    """

    sizes: list[int]
    classes: tuple[Tensor, ...]
    boxes: tuple[Tensor, ...]
    padded_index: Tensor
    problems: Tensor
    instance_weights: Tensor | None = None
    ignored: Tensor | None = None

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
) -> tuple[list[int], list[Tensor], list[Tensor], Tensor, Tensor]:
    """Triplet classes (predicate, subject, object), boxes (subject, object), problems and the
    flat (subject, object) box indices [T, 2]."""
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
    return sizes, classes, triplet_boxes, problems, flat_pair


INSTANCE_KEYS = ("box_weights", "box_ignore", "relation_weights", "relation_ignore")


def _per_item(
    targets: Sequence[dict[str, Any]], key: str, length: str, fill: Any, device
) -> Tensor:
    """``key`` of every target concatenated (``fill`` where a target has none)."""
    parts = []
    for position, target in enumerate(targets):
        count = int(target[length].shape[0])
        value = target.get(key)
        if value is None:
            parts.append(torch.full((count,), fill))
            continue
        value = torch.as_tensor(value)
        if value.shape != (count,):
            raise ValueError(
                f"targets[{position}][{key!r}]: expected shape ({count},), got {tuple(value.shape)}"
            )
        parts.append(value.to(torch.as_tensor(fill).dtype))
    return torch.cat(parts).to(device) if parts else torch.zeros(0).to(device)


def _instance_trust(
    targets: Sequence[dict[str, Any]], relation: bool, pairs: Tensor | None, device
) -> tuple[Tensor | None, Tensor | None]:
    """(instance weights [T], ignored [T]) or (None, None) when no target carries trust keys."""
    if not any(key in t for t in targets for key in INSTANCE_KEYS):
        return None, None
    box_w = _per_item(targets, "box_weights", "boxes", 1.0, device).float()
    box_i = _per_item(targets, "box_ignore", "boxes", False, device).bool()
    if not relation:
        return box_w, box_i
    rel_w = _per_item(targets, "relation_weights", "relations", 1.0, device).float()
    rel_i = _per_item(targets, "relation_ignore", "relations", False, device).bool()
    if box_w.numel():
        subj, obj = pairs[:, 0], pairs[:, 1]
        rel_w = rel_w * box_w[subj] * box_w[obj]
        rel_i = rel_i | box_i[subj] | box_i[obj]
    return rel_w, rel_i


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
    pairs = None
    if relation:
        sizes, classes, boxes, problems, pairs = _relation_parts(targets, device)
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
    weights, ignored = _instance_trust(targets, relation, pairs, device)
    if weights is not None:
        bad = ~torch.isfinite(weights) | (weights < 0)
        problems = problems | torch.where(bad, PROBLEM_WEIGHT, 0).to(torch.int32)
    return FlatTargets(
        sizes=sizes,
        classes=tuple(clamped),
        boxes=tuple(boxes),
        padded_index=_padded_index(sizes, device),
        problems=problems,
        instance_weights=weights,
        ignored=ignored,
    )
