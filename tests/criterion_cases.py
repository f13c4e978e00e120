"""Shared batches and an independent, loop-based DETR reference for the criterion tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

REL_KEYS = (
    "relation_logits",
    "relation_subject_logits",
    "relation_object_logits",
    "relation_subject_boxes",
    "relation_object_boxes",
)


def make_targets(seed, layout, num_classes, num_predicates, sources=None, weights=None):
    """layout: list of (num boxes, num relations) per image; boxes cxcywh inside [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for i, (n, m) in enumerate(layout):
        center = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        size = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        target = {
            "boxes": torch.cat((center, size), dim=1),
            "labels": torch.randint(0, num_classes, (n,), generator=g),
            "relations": torch.stack(
                (
                    torch.randint(0, max(n, 1), (m,), generator=g),
                    torch.randint(0, max(n, 1), (m,), generator=g),
                    torch.randint(0, num_predicates, (m,), generator=g),
                ),
                dim=1,
            ),
            "source": sources[i] if sources else "real",
            "dataset_type": "real",
        }
        if weights is not None:
            target["loss_weight"] = weights[i]
        targets.append(target)
    return targets


def _layer(g, batch, queries, num_classes, num_predicates, entity):
    layer = {
        "relation_logits": torch.randn(batch, queries, num_predicates + 1, generator=g),
        "relation_subject_logits": torch.randn(batch, queries, num_classes + 1, generator=g),
        "relation_object_logits": torch.randn(batch, queries, num_classes + 1, generator=g),
        "relation_subject_boxes": torch.rand(batch, queries, 4, generator=g) * 0.8 + 0.1,
        "relation_object_boxes": torch.rand(batch, queries, 4, generator=g) * 0.8 + 0.1,
    }
    if entity:
        layer["pred_logits"] = torch.randn(batch, queries, num_classes + 1, generator=g)
        layer["pred_boxes"] = torch.rand(batch, queries, 4, generator=g) * 0.8 + 0.1
    for value in layer.values():
        value.requires_grad_(True)
    return layer


def make_outputs(seed, batch, queries, num_classes, num_predicates, *, aux=0, entity=False):
    g = torch.Generator().manual_seed(seed)
    outputs = _layer(g, batch, queries, num_classes, num_predicates, entity)
    outputs["aux_outputs"] = [
        _layer(g, batch, queries, num_classes, num_predicates, entity) for _ in range(aux)
    ]
    return outputs


def slice_batch(outputs, start, stop):
    """Outputs of images [start, stop) as new leaf tensors (for per-image / per-rank runs)."""
    out = {
        k: v[start:stop].detach().clone().requires_grad_(True)
        for k, v in outputs.items()
        if k != "aux_outputs"
    }
    out["aux_outputs"] = [slice_batch(a, start, stop) for a in outputs.get("aux_outputs", [])]
    return out


def ref_giou(a, b):
    """Pairwise GIoU of cxcywh boxes written out plainly (independent of box_ops)."""

    def xyxy(x):
        return torch.stack(
            [
                x[:, 0] - x[:, 2] / 2,
                x[:, 1] - x[:, 3] / 2,
                x[:, 0] + x[:, 2] / 2,
                x[:, 1] + x[:, 3] / 2,
            ],
            1,
        )

    a, b = xyxy(a), xyxy(b)
    out = torch.zeros(len(a), len(b))
    for i in range(len(a)):
        for j in range(len(b)):
            iw = (torch.min(a[i, 2], b[j, 2]) - torch.max(a[i, 0], b[j, 0])).clamp(min=0)
            ih = (torch.min(a[i, 3], b[j, 3]) - torch.max(a[i, 1], b[j, 1])).clamp(min=0)
            inter = iw * ih
            union = (
                (a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1])
                + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1])
                - inter
            )
            hull = (torch.max(a[i, 2], b[j, 2]) - torch.min(a[i, 0], b[j, 0])) * (
                torch.max(a[i, 3], b[j, 3]) - torch.min(a[i, 1], b[j, 1])
            )
            out[i, j] = inter / union - (hull - union) / hull
    return out


def image_triplets(target, relation):
    """(class lists per head, box list per head) of one image, per the target contract
    (docs/architecture.md)."""
    if not relation:
        return [target["labels"]], [target["boxes"]]
    rel = target["relations"]
    labels, boxes = target["labels"], target["boxes"]
    return ([rel[:, 2], labels[rel[:, 0]], labels[rel[:, 1]]], [boxes[rel[:, 0]], boxes[rel[:, 1]]])


def reference_match(layer, target, relation, b):
    class_keys = REL_KEYS[:3] if relation else ("pred_logits",)
    box_keys = REL_KEYS[3:] if relation else ("pred_boxes",)
    classes, boxes = image_triplets(target, relation)
    if len(classes[0]) == 0:
        return [], []
    cost = 0
    for key, cls in zip(class_keys, classes):
        cost = cost - layer[key][b].detach().softmax(-1)[:, cls]
    for key, bx in zip(box_keys, boxes):
        pred = layer[key][b].detach()
        l1 = (pred[:, None, :] - bx[None, :, :]).abs().sum(-1)
        cost = cost + 5 * l1 - 2 * ref_giou(pred, bx)
    rows, cols = linear_sum_assignment(cost.numpy())
    return list(rows), list(cols)


def reference_layer_losses(layer, targets, relation, class_weights):
    """DETR's losses for one layer, unweighted, image by image."""
    class_keys = REL_KEYS[:3] if relation else ("pred_logits",)
    box_keys = REL_KEYS[3:] if relation else ("pred_boxes",)
    names = ["loss_relation", "loss_ce_subject", "loss_ce_object"] if relation else ["loss_ce"]
    suffixes = ["_subject", "_object"] if relation else [""]
    num_boxes = max(sum(len(image_triplets(t, relation)[0][0]) for t in targets), 1)
    losses = {}
    matches = [reference_match(layer, t, relation, b) for b, t in enumerate(targets)]
    for h, (key, name) in enumerate(zip(class_keys, names)):
        logits = layer[key]
        tc = torch.full(logits.shape[:2], logits.shape[-1] - 1, dtype=torch.int64)
        for b, t in enumerate(targets):
            rows, cols = matches[b]
            for q, j in zip(rows, cols):
                tc[b, q] = image_triplets(t, relation)[0][h][j]
        losses[name] = F.cross_entropy(logits.flatten(0, 1), tc.flatten(), weight=class_weights[h])
    for h, (key, suffix) in enumerate(zip(box_keys, suffixes)):
        l1 = giou = 0
        for b, t in enumerate(targets):
            rows, cols = matches[b]
            if not rows:
                continue
            src = layer[key][b][list(rows)]
            tgt = image_triplets(t, relation)[1][h][list(cols)]
            l1 = l1 + F.l1_loss(src, tgt, reduction="sum")
            giou = giou + (1 - ref_giou(src, tgt).diagonal()).sum()
        losses["loss_bbox" + suffix] = l1 / num_boxes
        losses["loss_giou" + suffix] = giou / num_boxes
    return losses


def match(matcher, outputs, targets):
    """Per image (query indices, target indices) as int64 tensors, through the criterion's path."""
    from realsynth.modeling.heads import ENTITY_HEADS, RELATION_HEADS
    from realsynth.modeling.matcher import foreground_classes
    from realsynth.modeling.set_targets import flatten_targets

    spec = RELATION_HEADS if "relation_logits" in outputs else ENTITY_HEADS
    flat = flatten_targets(targets, spec, foreground_classes(outputs, spec), device="cpu")
    return [
        (torch.from_numpy(q), torch.from_numpy(t)) for q, t in matcher.assign(outputs, flat, spec)
    ]
