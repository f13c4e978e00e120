"""The output contract every relation model meets (realsynth's own, an HF DETR-family body with
realsynth's heads, or a user's model reached by import path), checked on the first batch.

Relation outputs, for a batch of B images and Q relation queries (background, "no relation" /
"no object", at the LAST index of every class dimension; boxes cxcywh normalized to [0, 1]):

- ``relation_logits`` [B, Q, R + 1], ``relation_subject_logits`` / ``relation_object_logits``
  [B, Q, C + 1], ``relation_subject_boxes`` / ``relation_object_boxes`` [B, Q, 4];
- optional entity outputs ``pred_logits`` [B, Qe, C + 1] and ``pred_boxes`` [B, Qe, 4];
- optional ``aux_outputs``: a list of dicts with the same keys, earlier decoder layers first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from realsynth.modeling.heads import AUX_OUTPUTS, ENTITY_HEADS, RELATION_HEADS, HeadSpec


def expected_shapes(
    spec: HeadSpec, batch: int, queries: int, num_classes: int, num_predicates: int
) -> dict[str, tuple[int, ...]]:
    """The shape of each output key of ``spec`` for ``queries`` queries."""
    shapes = {}
    for key in spec.class_keys:
        width = num_predicates + 1 if key == RELATION_HEADS.class_keys[0] else num_classes + 1
        shapes[key] = (batch, queries, width)
    return {**shapes, **{key: (batch, queries, 4) for key in spec.box_keys}}


def check_outputs(
    outputs: Any, *, batch: int, num_classes: int, num_predicates: int, where: str = "model"
) -> None:
    """Check a model's outputs for a batch of ``batch`` images against the contract.

    Args:
        outputs: what the model's ``forward(images, pixel_mask)`` returned.
        batch: B, the images of the batch.
        num_classes: C, foreground entity classes.
        num_predicates: R, foreground predicates.
        where: how messages name the model (e.g. its import path).

    Raises:
        ValueError: one line naming the first key that is missing or has the wrong shape or
            dtype, the expected shape and the shape received.
    """
    if not isinstance(outputs, Mapping):
        raise ValueError(
            f"{where}: forward must return a dict of output tensors, got {type(outputs).__name__}"
        )
    layers = [("", outputs)]
    aux = outputs.get(AUX_OUTPUTS, [])
    if not isinstance(aux, list | tuple):
        raise ValueError(
            f"{where}: {AUX_OUTPUTS!r} must be a list of dicts, got {type(aux).__name__}"
        )
    layers += [(f"{AUX_OUTPUTS}[{i}].", layer) for i, layer in enumerate(aux)]
    for prefix, layer in layers:
        _check_spec(layer, RELATION_HEADS, prefix, where, batch, num_classes, num_predicates)
        if any(key in layer for key in ENTITY_HEADS.output_keys):
            _check_spec(layer, ENTITY_HEADS, prefix, where, batch, num_classes, num_predicates)


def _check_spec(
    layer: Any,
    spec: HeadSpec,
    prefix: str,
    where: str,
    batch: int,
    num_classes: int,
    num_predicates: int,
) -> None:
    """Every key of ``spec`` in ``layer``: a floating tensor of the expected shape."""
    if not isinstance(layer, Mapping):
        raise ValueError(
            f"{where}: {prefix.rstrip('.')} must be a dict, got {type(layer).__name__}"
        )
    first = spec.class_keys[0]
    if first not in layer:
        raise ValueError(f"{where}: output {(prefix + first)!r} is missing ({_expected(spec)})")
    value = layer[first]
    queries = int(value.shape[1]) if isinstance(value, torch.Tensor) and value.dim() == 3 else -1
    for key, shape in expected_shapes(spec, batch, queries, num_classes, num_predicates).items():
        if key not in layer:
            raise ValueError(
                f"{where}: output {(prefix + key)!r} is missing, expected shape {_shape(shape)}"
            )
        tensor = layer[key]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            got = (
                f"a {tensor.dtype} tensor"
                if isinstance(tensor, torch.Tensor)
                else type(tensor).__name__
            )
            raise ValueError(
                f"{where}: output {(prefix + key)!r} must be a float tensor, got {got}"
            )
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{where}: output {(prefix + key)!r} has shape {list(tensor.shape)}, expected "
                f"{_shape(shape)} ([B, Q, ...] with B={batch}, C={num_classes}, R={num_predicates})"
            )


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("Q" if s == -1 else str(s) for s in shape) + "]"


def _expected(spec: HeadSpec) -> str:
    return "expected keys " + ", ".join(spec.output_keys)
