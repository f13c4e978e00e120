"""Model output keys, loss-term names and their default coefficients: the one place they live.

A prediction family (relation triplets, or DETR entities) is a :class:`HeadSpec`: the output keys
of its class and box heads and the loss term each head gives. Adding a head or a term means
editing this file; the model, the matcher, the criterion, the logs and the config derive theirs
from here. Class logits carry a background ("no relation" / "no object") entry at the LAST index;
boxes are cxcywh normalized to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

RELATION_LOGITS = "relation_logits"  # [B, Q, R + 1]
SUBJECT_LOGITS = "relation_subject_logits"  # [B, Q, C + 1]
OBJECT_LOGITS = "relation_object_logits"  # [B, Q, C + 1]
SUBJECT_BOXES = "relation_subject_boxes"  # [B, Q, 4]
OBJECT_BOXES = "relation_object_boxes"  # [B, Q, 4]
ENTITY_LOGITS = "pred_logits"  # [B, Qe, C + 1]
ENTITY_BOXES = "pred_boxes"  # [B, Qe, 4]
AUX_OUTPUTS = "aux_outputs"  # list of dicts with the same keys, earlier decoder layers first

#: DETR's loss coefficients and matching costs: classification, L1, GIoU.
CLASS_COEFFICIENT = 1.0
BBOX_COEFFICIENT = 5.0
GIOU_COEFFICIENT = 2.0


@dataclass(frozen=True)
class HeadSpec:
    """Output keys and loss-term names of one prediction family."""

    mode: str
    class_keys: tuple[str, ...]
    box_keys: tuple[str, ...]
    class_terms: tuple[str, ...]
    bbox_terms: tuple[str, ...]
    giou_terms: tuple[str, ...]

    @property
    def output_keys(self) -> tuple[str, ...]:
        return self.class_keys + self.box_keys

    @property
    def terms(self) -> tuple[str, ...]:
        return self.class_terms + self.bbox_terms + self.giou_terms


RELATION_HEADS = HeadSpec(
    mode="relation",
    class_keys=(RELATION_LOGITS, SUBJECT_LOGITS, OBJECT_LOGITS),
    box_keys=(SUBJECT_BOXES, OBJECT_BOXES),
    class_terms=("loss_relation", "loss_ce_subject", "loss_ce_object"),
    bbox_terms=("loss_bbox_subject", "loss_bbox_object"),
    giou_terms=("loss_giou_subject", "loss_giou_object"),
)
ENTITY_HEADS = HeadSpec(
    mode="entity",
    class_keys=(ENTITY_LOGITS,),
    box_keys=(ENTITY_BOXES,),
    class_terms=("loss_ce",),
    bbox_terms=("loss_bbox",),
    giou_terms=("loss_giou",),
)
HEAD_SPECS = (RELATION_HEADS, ENTITY_HEADS)


def loss_coefficients(
    class_coefficient: float = CLASS_COEFFICIENT,
    bbox_coefficient: float = BBOX_COEFFICIENT,
    giou_coefficient: float = GIOU_COEFFICIENT,
) -> dict[str, float]:
    """Every base loss term's coefficient from the three DETR-style ones (class, L1, GIoU)."""
    coefficients = {}
    for spec in HEAD_SPECS:
        coefficients.update({term: class_coefficient for term in spec.class_terms})
        coefficients.update({term: bbox_coefficient for term in spec.bbox_terms})
        coefficients.update({term: giou_coefficient for term in spec.giou_terms})
    return coefficients


def base_term(key: str) -> str:
    """The base term of a loss key: ``loss_giou_subject_1`` (auxiliary layer 1) ->
    ``loss_giou_subject``; a base key is its own base."""
    base, _, layer = key.rpartition("_")
    return base if layer.isdigit() and base else key
