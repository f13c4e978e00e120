"""Per-layer loss terms of the set criterion, as weighted terms (see ``weighting``), and the
criterion's helpers: loss coefficients by kind of term, CE class weights, background weights.

Predictions and targets follow the output and target contracts of ``docs/architecture.md``:
class logits carry the background ("no object" / "no relation") at the LAST index, boxes are
cxcywh normalized to [0, 1]. Every function works on the whole batch at once from flat matched
indices: no Python loop over images or queries, and no host sync. The terms come back undivided
(:class:`WeightedTerm`): the criterion divides all of them at once, with one all-reduce per
forward under DDP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from realsynth.modeling.heads import (
    BBOX_COEFFICIENT,
    CLASS_COEFFICIENT,
    GIOU_COEFFICIENT,
    HEAD_SPECS,
    HeadSpec,
)
from realsynth.modeling.matcher import Assignment
from realsynth.modeling.set_targets import FlatTargets
from realsynth.modeling.weighting import (
    BatchWeights,
    Normalization,
    WeightedTerm,
    box_term,
    classification_term,
    per_source_means,
)
from realsynth.utils.box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou

CeScope = Literal["all", "matched"]

#: Coefficient key of each kind of term -> (the ``HeadSpec`` field naming its terms, its default
#: coefficient). A new kind of term takes one entry here and one ``loss_<kind>`` method of the
#: criterion.
COEFFICIENT_KINDS: dict[str, tuple[str, float]] = {
    "class": ("class_terms", CLASS_COEFFICIENT),
    "bbox": ("bbox_terms", BBOX_COEFFICIENT),
    "giou": ("giou_terms", GIOU_COEFFICIENT),
}


def expand_coefficients(by_kind: Mapping[str, float] | None = None) -> dict[str, float]:
    """Every base (final-layer) term's coefficient from the per-kind ones (``COEFFICIENT_KINDS``
    keys; a missing kind takes its default), head spec by head spec, kind by kind."""
    by_kind = by_kind or {}
    return {
        term: by_kind.get(kind, default)
        for spec in HEAD_SPECS
        for kind, (field, default) in COEFFICIENT_KINDS.items()
        for term in getattr(spec, field)
    }


DEFAULT_COEFFICIENTS: dict[str, float] = expand_coefficients()


class TermCoefficients:
    """The coefficient of every loss key: base terms, and ``<term>_{i}`` of auxiliary layer i,
    which takes its base term's.

    The expansion over auxiliary layers is built once per number of layers, and the terms of a
    loss dict once per distinct key layout (a run has one); both are cached, so no step parses
    key names. ``base`` is fixed at construction.
    """

    def __init__(self, base: dict[str, float]):
        self.base = base
        self._expanded: dict[int, dict[str, float]] = {}
        self._plans: dict[tuple[str, ...], dict[str, float]] = {}

    @classmethod
    def from_kinds(
        cls, by_kind: Mapping[str, float] | None, overrides: Mapping[str, float] | None
    ) -> TermCoefficients:
        """The per-kind coefficients (``COEFFICIENT_KINDS`` keys) expanded to every base term,
        then the per-term ``overrides`` (base term names).

        Raises:
            ValueError: an unknown term or kind, as the criterion's ``loss_coefficients`` or
                ``kind_coefficients``.
        """
        unknown = sorted(set(overrides or {}) - set(DEFAULT_COEFFICIENTS))
        if unknown:
            raise ValueError(
                f"loss_coefficients: unknown terms {unknown}; known: {sorted(DEFAULT_COEFFICIENTS)}"
            )
        unknown = sorted(set(by_kind or {}) - set(COEFFICIENT_KINDS))
        if unknown:
            known = sorted(COEFFICIENT_KINDS)
            raise ValueError(f"kind_coefficients: unknown kinds {unknown}; known: {known}")
        return cls({**expand_coefficients(by_kind), **(overrides or {})})

    def for_layers(self, num_aux_layers: int) -> dict[str, float]:
        """Every term key of the final layer and of ``num_aux_layers`` auxiliary ones ->
        coefficient (cached; read-only)."""
        table = self._expanded.get(num_aux_layers)
        if table is None:
            table = dict(self.base)
            for i in range(num_aux_layers):
                table.update({f"{term}_{i}": value for term, value in self.base.items()})
            self._expanded[num_aux_layers] = table
        return table

    def of_terms(self, keys: Iterable[str]) -> dict[str, float]:
        """The loss terms among ``keys``, in their order, -> coefficient (``diag/...`` and other
        keys are left out; cached per layout; read-only)."""
        layout = tuple(keys)
        plan = self._plans.get(layout)
        if plan is None:
            table = self.for_layers(self._aux_layer_count(layout))
            plan = {key: table[key] for key in layout if key in table}
            self._plans[layout] = plan
        return plan

    def _aux_layer_count(self, keys: Iterable[str]) -> int:
        """1 + the highest auxiliary layer i among keys ``<term>_{i}`` of a base term, else 0."""
        count = 0
        for key in keys:
            term, _, layer = key.rpartition("_")
            if key not in self.base and term in self.base and layer.isdecimal():
                count = max(count, int(layer) + 1)
        return count


def class_weight_vector(size: int, empty: float, foreground: Tensor | None, name: str) -> Tensor:
    """[size + 1] CE class weights: foreground (default ones) then the background's ``empty``
    (the background is the last class index)."""
    if foreground is None:
        foreground = torch.ones(size)
    foreground = torch.as_tensor(foreground, dtype=torch.float32)
    if foreground.shape != (size,):
        raise ValueError(f"{name}: expected shape ({size},), got {tuple(foreground.shape)}")
    weights = torch.cat((foreground, torch.tensor([float(empty)])))
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"{name} (with its empty weight {empty}) must be finite and >= 0")
    return weights


def image_background_weights(
    targets: Sequence[dict[str, Any]], collated: Tensor | None, device: torch.device
) -> Tensor | None:
    """[B] background weights (collated, or the targets' ``background_weight``), or None when
    all are 1 (the exact path of a criterion without them)."""
    if collated is None:
        if not any("background_weight" in t for t in targets):
            return None
        collated = torch.tensor([float(t.get("background_weight", 1.0)) for t in targets])
    host = collated.detach().cpu().to(torch.float32).reshape(-1)
    bad = (~torch.isfinite(host) | (host < 0)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"background_weight must be finite and >= 0: positions {bad} have "
            f"{[float(host[i]) for i in bad]}"
        )
    values = host.to(device)
    if values.shape[0] != len(targets):
        raise ValueError(f"{values.shape[0]} background_weights for a batch of {len(targets)}")
    return values


@dataclass(frozen=True)
class BatchContext:
    """What every layer of one criterion call shares (computed once per forward).

    Attributes:
        weights: per-image loss weights and sources of the batch.
        normalization: ``"count"`` or ``"weight"``.
        ce_scope: ``"all"`` queries or only ``"matched"`` ones in classification losses.
        background: float32 [B] weight of the no-object / no-relation CE of each image's
            unmatched queries, or None (all 1).
    """

    weights: BatchWeights
    normalization: Normalization
    ce_scope: CeScope
    background: Tensor | None = None

    @property
    def num_sources(self) -> int:
        return len(self.weights.source_names)


@dataclass(frozen=True)
class Matched:
    """Flat matched pairs of one layer: image, query and flat target index, each int64 [n]."""

    batch: Tensor
    query: Tensor
    target: Tensor


@dataclass(frozen=True)
class LayerInputs:
    """What every ``loss_<kind>`` method of the criterion reads for one decoder layer of one spec.

    Attributes:
        layer: the layer's outputs, ``spec``'s class logits [B, Q, K+1] (background last) and
            boxes [B, Q, 4] (cxcywh normalized to [0, 1]).
        spec: the head spec (relation triplets or DETR entities) whose terms are computed.
        flat: the batch's targets for ``spec``, flattened (T targets).
        matched: the layer's flat matched pairs.
        log_probs: one [B, Q, K+1] log-softmax per class head of ``spec``, in ``class_keys`` order.
        ctx: batch context.
        diagnostics: also compute the per-source unweighted losses (the final layer only).
    """

    layer: dict[str, Tensor]
    spec: HeadSpec
    flat: FlatTargets
    matched: Matched
    log_probs: tuple[Tensor, ...]
    ctx: BatchContext
    diagnostics: bool


def matched_pairs(assignment: Assignment, flat: FlatTargets, device: torch.device) -> Matched:
    """Concatenate per-image assignments into flat index tensors with one host->device copy."""
    lengths = [len(q) for q, _ in assignment]
    starts = np.concatenate(([0], np.cumsum(flat.sizes)[:-1])).astype(np.int64)
    packed = np.zeros((3, sum(lengths)), dtype=np.int64)
    if packed.shape[1]:
        packed[0] = np.repeat(np.arange(len(lengths)), lengths)
        packed[1] = np.concatenate([q for q, _ in assignment])
        packed[2] = np.concatenate([t + starts[b] for b, (_, t) in enumerate(assignment)])
    batch, query, target = torch.from_numpy(packed).to(device, non_blocking=True)
    return Matched(batch=batch, query=query, target=target)


def classification_loss(
    log_probs: Tensor,
    classes: Tensor,
    matched: Matched,
    class_weights: Tensor,
    ctx: BatchContext,
    *,
    diagnostics: bool = True,
    flat: FlatTargets | None = None,
) -> tuple[WeightedTerm, Tensor | None]:
    """Weighted cross-entropy of one class head.

    Per query: ``w_image * w_class(target) * CE``. ``ce_scope="all"``: every query, unmatched ones
    target the background (last index). The divisor follows ``weighting.classification_term``, so
    all-ones image weights equal ``F.cross_entropy(..., weight=class_weights)``.

    Args:
        log_probs: [B, Q, K+1] log-softmax of the logits, background last.
        classes: int64 [T] flat target classes (foreground, < K).
        matched: this layer's flat matched pairs.
        class_weights: [K+1] per-class CE weights (background's is the empty weight).
        ctx: batch context.
        diagnostics: also return the per-source unweighted loss.
        flat: the targets, for their instance weights and ignore flags (None: all 1, none).

    Returns:
        (the term, per-source unweighted loss [S] detached, or None without diagnostics).
    """
    batch, queries, width = log_probs.shape
    device = log_probs.device
    if ctx.ce_scope == "all":
        target = torch.full((batch, queries), width - 1, dtype=torch.int64, device=device)
        target[matched.batch, matched.query] = classes[matched.target]
        target = target.reshape(-1)
        scores = log_probs.reshape(batch * queries, width)
        image_of = torch.arange(batch, device=device).repeat_interleave(queries)
    else:
        target = classes[matched.target]
        scores = log_probs[matched.batch, matched.query]
        image_of = matched.batch
    ce = F.nll_loss(scores, target, reduction="none")
    w_class = class_weights[target]
    w_image = ctx.weights.image[image_of]
    if ctx.ce_scope == "all":
        trust = _query_trust(batch, queries, matched, ctx, flat)
    else:
        trust = _pair_trust(matched, flat)
    if trust is not None:
        multiplier, included = trust
        w_image, w_class = w_image * multiplier * included, w_class * included
    term = classification_term(ce, w_image, w_class, ctx.normalization)
    if not diagnostics:
        return term, None
    source_of = ctx.weights.source_ids[image_of]
    return term, per_source_means(ce[:, None], w_class, source_of, ctx.num_sources)[:, 0]


def _query_trust(
    batch: int, queries: int, matched: Matched, ctx: BatchContext, flat: FlatTargets | None
) -> tuple[Tensor, Tensor] | None:
    """Per query [B * Q]: weight multiplier (matched: instance weight; unmatched: background
    weight) and whether it counts (not matched to an ignored target); None when all are 1."""
    weights = flat.instance_weights if flat is not None else None
    ignored = flat.ignored if flat is not None else None
    if ctx.background is None and weights is None and ignored is None:
        return None
    device = ctx.weights.image.device
    multiplier = torch.ones(batch, queries, device=device)
    if ctx.background is not None:
        multiplier = multiplier * ctx.background[:, None]
    multiplier[matched.batch, matched.query] = (
        weights[matched.target] if weights is not None else 1.0
    )
    included = torch.ones(batch, queries, device=device)
    if ignored is not None:
        included[matched.batch, matched.query] = (~ignored[matched.target]).float()
    return multiplier.reshape(-1), included.reshape(-1)


def _pair_trust(matched: Matched, flat: FlatTargets | None) -> tuple[Tensor, Tensor] | None:
    """Per matched pair [n]: instance weight and whether it counts; None when all are 1."""
    if flat is None or (flat.instance_weights is None and flat.ignored is None):
        return None
    n = matched.target.shape[0]
    device = matched.target.device
    weights = (
        flat.instance_weights[matched.target]
        if flat.instance_weights is not None
        else torch.ones(n, device=device)
    )
    included = (
        (~flat.ignored[matched.target]).float()
        if flat.ignored is not None
        else torch.ones(n, device=device)
    )
    return weights, included


def box_losses(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    matched: Matched,
    ctx: BatchContext,
    *,
    diagnostics: bool = True,
    flat: FlatTargets | None = None,
) -> tuple[WeightedTerm, WeightedTerm, Tensor | None]:
    """Weighted L1 and GIoU terms of one box head over the matched pairs.

    Args:
        pred_boxes: [B, Q, 4] cxcywh predictions in [0, 1].
        target_boxes: [T, 4] cxcywh flat targets.
        matched: this layer's flat matched pairs.
        ctx: batch context.
        diagnostics: also return the per-source unweighted losses.
        flat: the targets, for their instance weights and ignore flags (None: all 1, none).

    Returns:
        (l1 term, giou term, per-source unweighted [S, 2] (l1, giou) means per matched pair,
        detached, or None without diagnostics).
    """
    src = pred_boxes[matched.batch, matched.query].float()
    tgt = target_boxes[matched.target]
    l1 = (src - tgt).abs().sum(dim=1)
    giou = 1 - elementwise_generalized_box_iou(
        box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt), check=False
    )
    w_image = ctx.weights.image[matched.batch]
    included = None
    trust = _pair_trust(matched, flat)
    if trust is not None:
        w_image = w_image * trust[0]
        included = trust[1].bool()
    l1_term = box_term(l1, w_image, ctx.normalization, included)
    giou_term = box_term(giou, w_image, ctx.normalization, included)
    if not diagnostics:
        return l1_term, giou_term, None
    per_source = per_source_means(
        torch.stack((l1, giou), dim=1),
        torch.ones_like(l1) if included is None else included.float(),
        ctx.weights.source_ids[matched.batch],
        ctx.num_sources,
    )
    return l1_term, giou_term, per_source
