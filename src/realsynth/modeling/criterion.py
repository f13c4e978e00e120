"""RelationCriterion: the weighted set loss of a DETR-style relation detector.

Shaped like DETR's ``SetCriterion``: one ``loss_<kind>`` method per kind of term
(:meth:`RelationCriterion.loss_labels`: classification; :meth:`RelationCriterion.loss_boxes`: L1 and
GIoU), dispatched by :meth:`RelationCriterion.get_loss`, each giving the weighted terms of one
decoder layer for one head spec (relation triplets or DETR entities, see ``heads``). Per-image
``loss_weight`` scales every matched prediction's loss, for every term and every auxiliary decoder
layer (see ``weighting``).

Unlike the per-image weighted ``IterativeRelationCriterion`` of the public SpeaQ fork with a
multi-dataset patch (SpeaQ's and IterativeSG's criterion): the no-relation CE term stays,
class-weighted CE keeps PyTorch's normalization, diagnostics are detached and never summed into
the optimized loss, and there are no per-layer host syncs. The output and target contracts are
those of ``docs/architecture.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from realsynth.modeling.heads import AUX_OUTPUTS, HEAD_SPECS, RELATION_HEADS, HeadSpec
from realsynth.modeling.matcher import Assignment, HungarianMatcher, foreground_classes
from realsynth.modeling.set_losses import (
    COEFFICIENT_KINDS,
    DEFAULT_COEFFICIENTS,
    BatchContext,
    LayerInputs,
    TermCoefficients,
    box_losses,
    class_weight_vector,
    classification_loss,
    image_background_weights,
    matched_pairs,
)
from realsynth.modeling.set_targets import FlatTargets, flatten_targets
from realsynth.modeling.weighting import (
    Normalization,
    OnInvalid,
    WeightedTerm,
    batch_weights,
    reduce_terms,
)

__all__ = ["COEFFICIENT_KINDS", "DEFAULT_COEFFICIENTS", "LayerLosses", "RelationCriterion"]

#: Terms of one layer and their per-source diagnostics: ({term: undivided weighted term},
#: {term: detached [S] unweighted mean per source}, empty without diagnostics).
LayerLosses = tuple[dict[str, WeightedTerm], dict[str, Tensor]]


def _check_choices(**choices: str) -> None:
    """Raise ``ValueError`` for an unknown ``ce_scope``, ``normalization`` or
    ``on_invalid_weight``."""
    allowed = {
        "ce_scope": ("all", "matched"),
        "normalization": ("count", "weight"),
        "on_invalid_weight": ("error", "fallback"),
    }
    for name, value in choices.items():
        if value not in allowed[name]:
            raise ValueError(f"{name} must be one of {allowed[name]}, got {value!r}")


class RelationCriterion(nn.Module):
    """Hungarian-matched, per-image weighted set loss for relation (and entity) predictions.

    Outputs (the output contract of ``docs/architecture.md``): relation mode uses
    ``relation_logits`` [B, Q, R+1], ``relation_subject_logits`` / ``relation_object_logits``
    [B, Q, C+1] and ``relation_subject_boxes`` / ``relation_object_boxes`` [B, Q, 4]; entity
    predictions ``pred_logits`` [B, Qe, C+1] / ``pred_boxes`` [B, Qe, 4] add DETR's terms;
    ``aux_outputs`` repeats the same keys per earlier decoder layer. Boxes are cxcywh normalized
    to [0, 1]; the background ("no relation" / "no object") is the LAST class index.

    Args:
        num_classes: C, foreground entity classes.
        num_predicates: R, foreground predicates.
        matcher: assignment of queries to targets (default ``HungarianMatcher()``).
        no_object_class_weight: CE weight of the no-object class (DETR's eos_coef), for the
            entity head and the relation subject/object heads.
        no_relation_class_weight: CE weight of the no-relation class.
        predicate_class_weights: [R] CE weights of the foreground predicates (default ones).
        loss_coefficients: per-term overrides (base term names, e.g. ``loss_giou_subject``),
            applied over the per-kind coefficients.
        ce_scope: ``"all"`` queries (unmatched ones target the background) or ``"matched"`` only.
        normalization: ``"count"`` or ``"weight"`` (see ``weighting``).
        on_invalid_weight: ``"error"`` or ``"fallback"`` for NaN/inf/negative ``loss_weight``.
        source_names: the names that ``forward``'s ``source_ids`` index (the run's sources).
        match_independent: match every decoder layer on its own predictions (default); False:
            one matching of the costs summed over the final and auxiliary layers, shared by all
            layers (IterativeSG's and SpeaQ's default).
        kind_coefficients: coefficient per kind of term (``COEFFICIENT_KINDS`` keys: ``class``,
            ``bbox``, ``giou``; default DETR's 1, 5, 2).

    ``coefficients`` holds the base terms' coefficients; :meth:`layer_coefficients` expands them
    once per number of auxiliary layers (``<term>_{i}`` takes its base term's). The criterion's
    options never change in ``forward``.
    """

    #: The kinds of loss computed for every layer, in this order (keys of :meth:`get_loss`).
    losses: tuple[str, ...] = ("labels", "boxes")

    def __init__(
        self,
        num_classes: int,
        num_predicates: int,
        *,
        matcher: HungarianMatcher | None = None,
        no_object_class_weight: float = 0.1,
        no_relation_class_weight: float = 0.1,
        predicate_class_weights: Tensor | None = None,
        loss_coefficients: dict[str, float] | None = None,
        ce_scope: Literal["all", "matched"] = "all",
        normalization: Normalization = "count",
        on_invalid_weight: OnInvalid = "error",
        source_names: Sequence[str] | None = None,
        match_independent: bool = True,
        kind_coefficients: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1 or num_predicates < 1:
            raise ValueError(
                f"num_classes and num_predicates must be >= 1, got {num_classes}, {num_predicates}"
            )
        _check_choices(
            ce_scope=ce_scope,
            normalization=normalization,
            on_invalid_weight=on_invalid_weight,
        )
        self.num_classes = num_classes
        self.num_predicates = num_predicates
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.ce_scope = ce_scope
        self.normalization = normalization
        self.on_invalid_weight = on_invalid_weight
        self.source_names = tuple(source_names) if source_names is not None else None
        self.match_independent = bool(match_independent)
        self._term_coefficients = TermCoefficients.from_kinds(kind_coefficients, loss_coefficients)
        self.coefficients: dict[str, float] = self._term_coefficients.base
        self.register_buffer(
            "entity_class_weights",
            class_weight_vector(num_classes, no_object_class_weight, None, "entity class weights"),
        )
        self.register_buffer(
            "predicate_class_weights",
            class_weight_vector(
                num_predicates,
                no_relation_class_weight,
                predicate_class_weights,
                "predicate_class_weights",
            ),
        )

    def get_loss(self, kind: str, inputs: LayerInputs) -> LayerLosses:
        """The terms of one kind (a :attr:`losses` entry) for one layer of one head spec."""
        loss_map: dict[str, Callable[[LayerInputs], LayerLosses]] = {
            "labels": self.loss_labels,
            "boxes": self.loss_boxes,
        }
        if kind not in loss_map:
            raise ValueError(f"unknown kind of loss {kind!r}; known: {sorted(loss_map)}")
        return loss_map[kind](inputs)

    def loss_labels(self, inputs: LayerInputs) -> LayerLosses:
        """Weighted cross-entropy of every class head of ``inputs.spec`` (``spec.class_terms``).

        Each head's log-probabilities [B, Q, K+1] (background at the last index K) against its
        flat target classes int64 [T]; under ``ce_scope="all"`` unmatched queries target the
        background. CE class weights: the predicate weights for ``relation_logits``, the entity
        weights (``no_object_class_weight`` for the background) for every entity class head.
        """
        terms: dict[str, WeightedTerm] = {}
        diag: dict[str, Tensor] = {}
        spec, flat = inputs.spec, inputs.flat
        for scores, term, classes, weights in zip(
            inputs.log_probs, spec.class_terms, flat.classes, self._class_weights(spec)
        ):
            terms[term], per_source = classification_loss(
                scores,
                classes,
                inputs.matched,
                weights,
                inputs.ctx,
                diagnostics=inputs.diagnostics,
                flat=flat,
            )
            if per_source is not None:
                diag[term] = per_source
        return terms, diag

    def loss_boxes(self, inputs: LayerInputs) -> LayerLosses:
        """Weighted L1 and GIoU of every box head of ``inputs.spec`` over the matched pairs.

        Predicted boxes [B, Q, 4] and flat target boxes [T, 4], both cxcywh normalized to [0, 1];
        L1 sums the 4 coordinates, GIoU is ``1 - GIoU`` of the xyxy corners. Terms in head order,
        each head's L1 then GIoU (``spec.bbox_terms[i]``, ``spec.giou_terms[i]``).
        """
        terms: dict[str, WeightedTerm] = {}
        diag: dict[str, Tensor] = {}
        spec = inputs.spec
        for key, l1_term, giou_term, boxes in zip(
            spec.box_keys, spec.bbox_terms, spec.giou_terms, inputs.flat.boxes
        ):
            terms[l1_term], terms[giou_term], per_source = box_losses(
                inputs.layer[key],
                boxes,
                inputs.matched,
                inputs.ctx,
                diagnostics=inputs.diagnostics,
                flat=inputs.flat,
            )
            if per_source is not None:
                diag[l1_term], diag[giou_term] = per_source.unbind(1)
        return terms, diag

    def _class_weights(self, spec: HeadSpec) -> tuple[Tensor, ...]:
        """The [K+1] CE class weights of each class head of ``spec``, in ``class_keys`` order."""
        if spec is RELATION_HEADS:
            return (
                self.predicate_class_weights,
                self.entity_class_weights,
                self.entity_class_weights,
            )
        return (self.entity_class_weights,)

    def _check_widths(self, layer: dict[str, Tensor], spec: HeadSpec, where: str) -> None:
        """Raise ``ValueError`` unless every class head has foreground + background columns."""
        expected = [self.num_classes + 1] * len(spec.class_keys)
        if spec is RELATION_HEADS:
            expected[0] = self.num_predicates + 1
        for key, width in zip(spec.class_keys, expected):
            if layer[key].shape[-1] != width:
                raise ValueError(
                    f"{where}[{key!r}] has {layer[key].shape[-1]} classes, expected {width} "
                    f"(foreground + background, last)"
                )

    def _layer_terms(
        self,
        layer: dict[str, Tensor],
        flat: FlatTargets,
        spec: HeadSpec,
        ctx: BatchContext,
        diagnostics: bool,
        assignment: Assignment | None = None,
    ) -> LayerLosses:
        """Undivided loss terms of one decoder layer, every kind of :attr:`losses` in order, and
        with ``diagnostics`` their per-source [S] means; ``assignment``: a shared matching
        (default: this layer's own)."""
        log_probs = tuple(layer[key].float().log_softmax(-1) for key in spec.class_keys)
        if assignment is None:
            assignment = self.matcher.assign(layer, flat, spec, list(log_probs))
        matched = matched_pairs(assignment, flat, ctx.weights.source_ids.device)
        inputs = LayerInputs(layer, spec, flat, matched, log_probs, ctx, diagnostics)
        terms: dict[str, WeightedTerm] = {}
        diag: dict[str, Tensor] = {}
        for kind in self.losses:
            kind_terms, kind_diag = self.get_loss(kind, inputs)
            terms.update(kind_terms)
            diag.update(kind_diag)
        return terms, diag

    def _spec_terms(
        self,
        outputs: dict[str, Any],
        layers: list[tuple[str, dict[str, Tensor]]],
        flat: FlatTargets,
        spec: HeadSpec,
        ctx: BatchContext,
    ) -> LayerLosses:
        """Every layer's terms of one head spec (``<term><suffix>``) and the final layer's
        per-source diagnostics (``diag/<term>/<source>``, detached 0-d)."""
        present = [(suffix, layer) for suffix, layer in layers if spec.class_keys[0] in layer]
        for suffix, layer in present:
            where = "outputs" if not suffix else f"outputs['aux_outputs'][{suffix[1:]}]"
            self._check_widths(layer, spec, where)
        shared = None
        if not self.match_independent:
            others = [layer for _, layer in present[1:]]
            shared = self.matcher.assign(outputs, flat, spec, extra_layers=others)
        terms: dict[str, WeightedTerm] = {}
        diagnostics: dict[str, Tensor] = {}
        for suffix, layer in present:
            layer_terms, diag = self._layer_terms(
                layer, flat, spec, ctx, not suffix, assignment=shared
            )
            terms.update({term + suffix: value for term, value in layer_terms.items()})
            for term, per_source in diag.items():
                for name, value in zip(ctx.weights.source_names, per_source.unbind(0)):
                    diagnostics[f"diag/{term}/{name}"] = value
        return terms, diagnostics

    def _context(
        self,
        targets: Sequence[dict[str, Any]],
        device: torch.device,
        loss_weights: Tensor | None,
        source_ids: Tensor | None,
        collated_background: Tensor | None,
    ) -> BatchContext:
        """The batch's validated weights, sources and options, shared by every layer."""
        weights = batch_weights(
            targets,
            device=device,
            on_invalid=self.on_invalid_weight,
            loss_weights=loss_weights,
            source_ids=source_ids,
            source_names=self.source_names,
        )
        background = image_background_weights(targets, collated_background, device)
        return BatchContext(weights, self.normalization, self.ce_scope, background)

    def forward(
        self,
        outputs: dict[str, Any],
        targets: Sequence[dict[str, Any]],
        *,
        loss_weights: Tensor | None = None,
        source_ids: Tensor | None = None,
        background_weights: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Compute every loss term of the final and auxiliary layers.

        Args:
            outputs: model outputs (see the class docstring), optionally with ``aux_outputs``.
            targets: one dict per image, as the target contract of ``docs/architecture.md``
                says (``boxes`` [N, 4] cxcywh normalized, ``labels`` [N], ``relations`` [M, 3];
                ``loss_weight`` defaults to 1.0).
            loss_weights: [B] per-image weights as collated (``collate_relations``); default:
                each target's ``loss_weight``.
            source_ids: [B] indices into ``source_names`` as collated; default: each target's
                ``source``.
            background_weights: [B] weight of the no-object / no-relation CE of each image's
                unmatched queries (``SYNTHETIC_BACKGROUND_WEIGHT``); default: each target's
                ``background_weight``, else 1.

        Returns:
            0-d loss terms (keys of ``coefficients``; auxiliary layer i as ``<term>_{i}``) and
            detached per-source unweighted losses of the final layer as ``diag/<term>/<source>``.
        """
        specs = [s for s in HEAD_SPECS if s.class_keys[0] in outputs]
        if not specs:
            raise ValueError(
                f"outputs need 'relation_logits' and/or 'pred_logits', got keys {sorted(outputs)}"
            )
        batch = outputs[specs[0].class_keys[0]].shape[0]
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch}")
        device = outputs[specs[0].class_keys[0]].device
        ctx = self._context(targets, device, loss_weights, source_ids, background_weights)
        layers = [("", outputs)] + [
            (f"_{i}", aux) for i, aux in enumerate(outputs.get(AUX_OUTPUTS, []))
        ]
        terms: dict[str, WeightedTerm] = {}
        diagnostics: dict[str, Tensor] = {}
        for spec in specs:
            flat = flatten_targets(targets, spec, foreground_classes(outputs, spec), device=device)
            spec_terms, spec_diag = self._spec_terms(outputs, layers, flat, spec, ctx)
            terms.update(spec_terms)
            diagnostics.update(spec_diag)
        return {**reduce_terms(terms), **diagnostics}

    def layer_coefficients(self, num_aux_layers: int) -> dict[str, float]:
        """Coefficient of every term of the final layer and of ``num_aux_layers`` auxiliary ones
        (``<term>_{i}`` takes its base term's); expanded once per count, cached (read-only)."""
        return self._term_coefficients.for_layers(num_aux_layers)

    def term_coefficients(self, keys: Iterable[str]) -> dict[str, float]:
        """The loss terms among ``keys``, in their order, -> coefficient (``diag/...`` keys are
        no terms); built once per distinct key layout, cached (read-only)."""
        return self._term_coefficients.of_terms(keys)

    def coefficient(self, key: str) -> float | None:
        """Coefficient of a loss key (aux ``<term>_{i}`` takes its base term's), or None for
        keys that are not loss terms (``diag/...``)."""
        return self.term_coefficients((key,)).get(key)

    def total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """Sum of ``coefficient * loss`` over the loss terms in ``losses``' order (``diag/...``
        keys never count): a 0-d tensor."""
        total = None
        for key, coefficient in self.term_coefficients(losses).items():
            value = losses[key]
            total = coefficient * value if total is None else total + coefficient * value
        if total is None:
            raise ValueError(f"no loss terms among keys {sorted(losses)}")
        return total
