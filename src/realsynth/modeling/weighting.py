"""Per-image loss weights: extraction, validation and weighted reductions.

Every image of a batch carries a ``loss_weight`` (real 1.0, synthetic 0.5 by default). A loss
term's per-element losses ``L_i`` belong to image ``b(i)`` and are reduced as

- ``count`` (default, the design note's formula): ``sum_i w_b(i) * L_i / N`` where ``N`` is what
  the unweighted loss divides by;
- ``weight``: ``sum_i w_b(i) * L_i / sum_i w_b(i)``, a scale that does not depend on the mix.

With every weight equal to 1.0 both modes return exactly the unweighted mean.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

Normalization = Literal["count", "weight"]
OnInvalid = Literal["error", "fallback"]

# Keeps an all-zero weight sum from dividing by zero: the numerator is then zero too.
WEIGHT_FLOOR = 1e-12


def weighted_loss(
    losses: Tensor,
    weights: Tensor,
    *,
    normalization: Normalization = "count",
    denominator: Tensor | float | None = None,
) -> Tensor:
    """Reduce per-element losses with per-element (per-image) weights.

    Args:
        losses: [N] or [N, k] per-element losses (k values per element, e.g. 4 box coordinates).
        weights: [N] weight of each element's image.
        normalization: ``"count"`` divides ``sum(w * L)`` by N * k; ``"weight"`` divides by the
            sum of the weights over the same N * k values (``k * sum(w)``).
        denominator: overrides the default divisor of either mode (e.g. DETR's all-reduced
            ``num_boxes``); a tensor keeps the result free of host syncs.

    Returns:
        0-d tensor. An empty input gives 0, still attached to ``losses``' graph.
    """
    if normalization not in ("count", "weight"):
        raise ValueError(f"normalization must be 'count' or 'weight', got {normalization!r}")
    if losses.dim() not in (1, 2) or weights.dim() != 1 or losses.shape[0] != weights.shape[0]:
        raise ValueError(
            f"weighted_loss expects losses [N] or [N, k] and weights [N], got losses "
            f"{tuple(losses.shape)} and weights {tuple(weights.shape)}"
        )
    w = weights.to(losses.dtype)
    per_element = losses if losses.dim() == 1 else losses.sum(dim=1)
    numerator = (w * per_element).sum()
    if denominator is not None:
        return numerator / denominator
    k = 1 if losses.dim() == 1 else losses.shape[1]
    if normalization == "count":
        return numerator / max(losses.numel(), 1)
    return numerator / (w.sum() * k).clamp(min=WEIGHT_FLOOR)


def _raw_weights(targets: Sequence[dict[str, Any]]) -> list[float]:
    """Host values of every target's ``loss_weight``, moving tensors with one transfer."""
    values: list[float] = []
    tensor_slots: list[int] = []
    tensors: list[Tensor] = []
    for position, target in enumerate(targets):
        value = target.get("loss_weight", 1.0)
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"targets[{position}]['loss_weight'] must be a scalar, got a tensor of shape "
                    f"{tuple(value.shape)}"
                )
            tensor_slots.append(position)
            tensors.append(value.detach().reshape(1))
            values.append(0.0)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            values.append(float(value))
        else:
            raise ValueError(
                f"targets[{position}]['loss_weight'] must be a number, got {type(value).__name__}"
            )
    if tensors:
        device = tensors[0].device
        stacked = torch.cat([t.to(device=device, dtype=torch.float64) for t in tensors])
        for position, value in zip(tensor_slots, stacked.cpu().tolist()):
            values[position] = value
    return values


def image_weights(
    targets: Sequence[dict[str, Any]],
    *,
    device: torch.device | str,
    on_invalid: OnInvalid = "error",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Per-image loss weights of a batch, validated.

    Args:
        targets: one dict per image; ``loss_weight`` (number or 1-element tensor) defaults to 1.0.
        device: device of the returned tensor.
        on_invalid: ``"error"`` raises ``ValueError`` naming the 0-based batch positions and their
            ``source`` when a weight is NaN, infinite or negative; ``"fallback"`` warns once and
            returns all ones (the unweighted loss).
        dtype: dtype of the returned tensor.

    Returns:
        [B] weights. At most one device->host sync (only when weights are accelerator tensors).
    """
    if on_invalid not in ("error", "fallback"):
        raise ValueError(f"on_invalid must be 'error' or 'fallback', got {on_invalid!r}")
    values = _raw_weights(targets)
    bad = [i for i, v in enumerate(values) if not (math.isfinite(v) and v >= 0.0)]
    if bad:
        details = ", ".join(
            f"position {i} (source={targets[i].get('source', '<missing>')!r}, "
            f"loss_weight={values[i]})"
            for i in bad
        )
        message = f"invalid loss_weight, expected finite and >= 0: {details}"
        if on_invalid == "error":
            raise ValueError(message)
        warnings.warn(f"{message}; falling back to unweighted loss for this batch", stacklevel=2)
        values = [1.0] * len(values)
    return torch.tensor(values, dtype=dtype, device=device)
