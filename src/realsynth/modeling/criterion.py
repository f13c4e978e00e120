"""RelationCriterion: the weighted set loss of a DETR-style relation detector.

Per-image ``loss_weight`` scales every matched prediction's loss, for every term and every
auxiliary decoder layer (the design note's IterativeRelationCriterion, without its mistakes: the
no-relation CE term stays, class-weighted CE keeps PyTorch's normalization, diagnostics are
detached and never summed into the optimized loss, and there are no per-layer host syncs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from realsynth.modeling.heads import (
    AUX_OUTPUTS,
    HEAD_SPECS,
    RELATION_HEADS,
    HeadSpec,
    base_term,
    loss_coefficients,
)
from realsynth.modeling.matcher import Assignment, HungarianMatcher, foreground_classes
from realsynth.modeling.set_losses import (
    BatchContext,
    box_losses,
    classification_loss,
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

DEFAULT_COEFFICIENTS: dict[str, float] = loss_coefficients()


def _class_weight_vector(size: int, empty: float, foreground: Tensor | None, name: str) -> Tensor:
    """[size + 1] CE class weights: foreground (default ones) then the background's ``empty``."""
    if foreground is None:
        foreground = torch.ones(size)
    foreground = torch.as_tensor(foreground, dtype=torch.float32)
    if foreground.shape != (size,):
        raise ValueError(f"{name}: expected shape ({size},), got {tuple(foreground.shape)}")
    weights = torch.cat((foreground, torch.tensor([float(empty)])))
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"{name} (with its empty weight {empty}) must be finite and >= 0")
    return weights


def _background_weights(
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


class RelationCriterion(nn.Module):
    """Hungarian-matched, per-image weighted set loss for relation (and entity) predictions.

    Outputs (DESIGN.md): relation mode uses ``relation_logits`` [B, Q, R+1],
    ``relation_subject_logits`` / ``relation_object_logits`` [B, Q, C+1] and
    ``relation_subject_boxes`` / ``relation_object_boxes`` [B, Q, 4] (cxcywh in [0, 1]); entity
    predictions ``pred_logits`` [B, Qe, C+1] / ``pred_boxes`` [B, Qe, 4] add DETR's terms;
    ``aux_outputs`` repeats the same keys per earlier decoder layer. Background is the last index.

    Args:
        num_classes: C, foreground entity classes.
        num_predicates: R, foreground predicates.
        matcher: assignment of queries to targets (default ``HungarianMatcher()``).
        no_object_class_weight: CE weight of the no-object class (DETR's eos_coef), for the
            entity head and the relation subject/object heads.
        no_relation_class_weight: CE weight of the no-relation class.
        predicate_class_weights: [R] CE weights of the foreground predicates (default ones).
        loss_coefficients: overrides of :data:`DEFAULT_COEFFICIENTS` by base term name.
        ce_scope: ``"all"`` queries (unmatched ones target the background) or ``"matched"`` only.
        normalization: ``"count"`` or ``"weight"`` (see ``weighting``).
        on_invalid_weight: ``"error"`` or ``"fallback"`` for NaN/inf/negative ``loss_weight``.
        source_names: the names that ``forward``'s ``source_ids`` index (the run's sources).
        match_independent: match every decoder layer on its own predictions (default); False:
            one matching of the costs summed over the final and auxiliary layers, shared by all
            layers (IterativeSG's and SpeaQ's default).

    ``coefficients`` holds the base terms' coefficients; an auxiliary layer's term ``<term>_{i}``
    takes its base term's (:meth:`coefficient`). The criterion never changes in ``forward``.
    """

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
    ):
        super().__init__()
        if num_classes < 1 or num_predicates < 1:
            raise ValueError(
                f"num_classes and num_predicates must be >= 1, got {num_classes}, {num_predicates}"
            )
        for name, value, allowed in (
            ("ce_scope", ce_scope, ("all", "matched")),
            ("normalization", normalization, ("count", "weight")),
            ("on_invalid_weight", on_invalid_weight, ("error", "fallback")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        unknown = sorted(set(loss_coefficients or {}) - set(DEFAULT_COEFFICIENTS))
        if unknown:
            raise ValueError(
                f"loss_coefficients: unknown terms {unknown}; known: {sorted(DEFAULT_COEFFICIENTS)}"
            )
        self.num_classes = num_classes
        self.num_predicates = num_predicates
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.ce_scope = ce_scope
        self.normalization = normalization
        self.on_invalid_weight = on_invalid_weight
        self.source_names = tuple(source_names) if source_names is not None else None
        self.match_independent = bool(match_independent)
        self.coefficients: dict[str, float] = {**DEFAULT_COEFFICIENTS, **(loss_coefficients or {})}
        self.register_buffer(
            "entity_class_weights",
            _class_weight_vector(num_classes, no_object_class_weight, None, "entity class weights"),
        )
        self.register_buffer(
            "predicate_class_weights",
            _class_weight_vector(
                num_predicates,
                no_relation_class_weight,
                predicate_class_weights,
                "predicate_class_weights",
            ),
        )

    def _class_weights(self, spec: HeadSpec) -> tuple[Tensor, ...]:
        if spec is RELATION_HEADS:
            return (
                self.predicate_class_weights,
                self.entity_class_weights,
                self.entity_class_weights,
            )
        return (self.entity_class_weights,)

    def _check_widths(self, layer: dict[str, Tensor], spec: HeadSpec, where: str) -> None:
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
    ) -> tuple[dict[str, WeightedTerm], dict[str, Tensor]]:
        """Undivided loss terms of one decoder layer and, with ``diagnostics``, per-source [S];
        ``assignment``: a shared matching (default: this layer's own)."""
        log_probs = [layer[key].float().log_softmax(-1) for key in spec.class_keys]
        if assignment is None:
            assignment = self.matcher.assign(layer, flat, spec, log_probs)
        matched = matched_pairs(assignment, flat, ctx.weights.source_ids.device)
        terms: dict[str, WeightedTerm] = {}
        diag: dict[str, Tensor] = {}
        for scores, term, classes, weights in zip(
            log_probs, spec.class_terms, flat.classes, self._class_weights(spec)
        ):
            terms[term], per_source = classification_loss(
                scores, classes, matched, weights, ctx, diagnostics=diagnostics, flat=flat
            )
            if per_source is not None:
                diag[term] = per_source
        for key, l1_term, giou_term, boxes in zip(
            spec.box_keys, spec.bbox_terms, spec.giou_terms, flat.boxes
        ):
            terms[l1_term], terms[giou_term], per_source = box_losses(
                layer[key], boxes, matched, ctx, diagnostics=diagnostics, flat=flat
            )
            if per_source is not None:
                diag[l1_term], diag[giou_term] = per_source.unbind(1)
        return terms, diag

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
            targets: one dict per image (DESIGN.md targets; ``loss_weight`` defaults to 1.0).
            loss_weights: [B] per-image weights as collated (``collate_relations``); default:
                each target's ``loss_weight``.
            source_ids: [B] indices into ``source_names`` as collated; default: each target's
                ``source``.
            background_weights: [B] weight of the no-object / no-relation CE of each image's
                unmatched queries (``SYNTHETIC_BACKGROUND_WEIGHT``); default: each target's
                ``background_weight``, else 1.

        Returns:
            Loss terms (keys of ``coefficients``; auxiliary layer i as ``<term>_{i}``) and detached
            per-source unweighted losses of the final layer as ``diag/<term>/<source>``.
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
        weights = batch_weights(
            targets,
            device=device,
            on_invalid=self.on_invalid_weight,
            loss_weights=loss_weights,
            source_ids=source_ids,
            source_names=self.source_names,
        )
        ctx = BatchContext(
            weights,
            self.normalization,
            self.ce_scope,
            _background_weights(targets, background_weights, device),
        )
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

    def _spec_terms(
        self,
        outputs: dict[str, Any],
        layers: list[tuple[str, dict[str, Tensor]]],
        flat: FlatTargets,
        spec: HeadSpec,
        ctx: BatchContext,
    ) -> tuple[dict[str, WeightedTerm], dict[str, Tensor]]:
        """Every layer's terms of one head spec (``<term><suffix>``) and the final layer's
        per-source diagnostics (``diag/<term>/<source>``)."""
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

    def coefficient(self, key: str) -> float | None:
        """Coefficient of a loss key (aux ``<term>_{i}`` takes its base term's), or None for
        keys that are not loss terms (``diag/...``)."""
        return self.coefficients.get(key, self.coefficients.get(base_term(key)))

    def total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """Sum of ``coefficient * loss`` over the loss terms (``diag/...`` keys never count)."""
        total = None
        for key, value in losses.items():
            coefficient = self.coefficient(key)
            if coefficient is None:
                continue
            total = coefficient * value if total is None else total + coefficient * value
        if total is None:
            raise ValueError(f"no loss terms among keys {sorted(losses)}")
        return total
