"""Per-image loss weights and the weighted reductions: the one place that turns per-element
losses into a loss term's value and its divisor.

Every image of a batch carries a weight ``w_b`` (real 1.0, synthetic 0.5 by default). A loss
term's per-element losses ``L_i`` belong to image ``b(i)``; its value is
``sum_i u_i * L_i / D`` where, for

- classification (CE, one element per query or per matched query): ``u_i = w_b(i) * c_i`` with
  ``c_i`` the CE class weight of the element's target class, and ``D = sum_i c_i`` under the
  ``count`` normalization (PyTorch's class-weighted mean; ``sum_i w_b(i) * L_i / N`` over the N
  elements when every ``c_i`` is 1) or ``D = sum_i w_b(i) * c_i`` under ``weight``;
- boxes (L1, GIoU, one element per matched pair): ``u_i = w_b(i)`` and ``D`` the number of matched
  pairs (DETR's ``num_boxes``, at least 1) under ``count`` or ``sum_i w_b(i)`` under ``weight``.

Per-instance trust enters the same rules: an element's ``w`` is its image's weight times its
target's instance weight (or, for an unmatched query, its image's background weight), counted in
the divisor only under ``weight``, like the image weight; an ignored target's element counts in
neither the numerator nor the divisor.

With every weight 1.0 both modes are exactly the unweighted loss. Under DDP each divisor is the
sum over ranks divided by the world size (what makes DDP's averaged gradient equal to the single
process's on the concatenated batch); :func:`reduce_terms` does that for every term of a forward
with one collective.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from realsynth.utils.distributed import all_reduce_sum, get_world_size

Normalization = Literal["count", "weight"]
OnInvalid = Literal["error", "fallback"]

# Keeps an all-zero weight sum from dividing by zero: the numerator is then zero too.
WEIGHT_FLOOR = 1e-12


@dataclass(frozen=True)
class WeightedTerm:
    """A loss term before its division.

    Attributes:
        numerator: 0-d, ``sum_i u_i * L_i`` (attached to the graph).
        divisor: 0-d, this rank's part of ``D`` (detached).
        floor: the least ``D`` may be (1 for counts, :data:`WEIGHT_FLOOR` for weight sums).
    """

    numerator: Tensor
    divisor: Tensor
    floor: float


def classification_term(
    losses: Tensor, image_weights: Tensor, class_weights: Tensor, normalization: Normalization
) -> WeightedTerm:
    """A CE term from per-element losses.

    Args:
        losses: [n] unweighted CE of each element.
        image_weights: [n] weight of each element's image.
        class_weights: [n] CE weight of each element's target class.
        normalization: ``count`` or ``weight`` (see the module docstring).
    """
    weights = image_weights.to(losses.dtype) * class_weights
    divisor = class_weights if normalization == "count" else weights
    return WeightedTerm((weights * losses).sum(), divisor.detach().sum(), WEIGHT_FLOOR)


def box_term(
    losses: Tensor,
    image_weights: Tensor,
    normalization: Normalization,
    included: Tensor | None = None,
) -> WeightedTerm:
    """An L1 or GIoU term from per-pair losses.

    Args:
        losses: [n] unweighted loss of each matched pair (L1 summed over the 4 coordinates).
        image_weights: [n] weight of each pair (its image's, times its instance weight).
        normalization: ``count`` (divide by the number of pairs) or ``weight``.
        included: bool [n], pairs that count (ignored targets do not); default all.
    """
    weights = image_weights.to(losses.dtype)
    if included is not None:
        weights = weights * included
    if normalization == "count" and included is None:
        divisor, floor = losses.new_tensor(float(losses.shape[0])), 1.0
    elif normalization == "count":
        divisor, floor = included.sum().to(losses.dtype), 1.0
    else:
        divisor, floor = weights.detach().sum(), WEIGHT_FLOOR
    return WeightedTerm((weights * losses).sum(), divisor, floor)


def reduce_terms(terms: Mapping[str, WeightedTerm]) -> dict[str, Tensor]:
    """Divide every term by its divisor averaged over ranks (one all-reduce for all of them)."""
    if not terms:
        return {}
    divisors = torch.stack([t.divisor.to(torch.float32).reshape(()) for t in terms.values()])
    divisors = all_reduce_sum(divisors) / get_world_size()
    return {
        name: term.numerator / divisors[i].clamp(min=term.floor)
        for i, (name, term) in enumerate(terms.items())
    }


@torch.no_grad()
def per_source_means(
    values: Tensor, weights: Tensor, source_ids: Tensor, num_sources: int
) -> Tensor:
    """Detached weighted mean of ``values`` [n, k] per source: sum(w * v) / sum(w) -> [S, k].

    A source without elements reports 0.
    """
    values, weights = values.detach().float(), weights.detach().float()
    num = values.new_zeros(num_sources, values.shape[1]).index_add_(
        0, source_ids, values * weights[:, None]
    )
    den = values.new_zeros(num_sources).index_add_(0, source_ids, weights)
    return num / den.clamp(min=WEIGHT_FLOOR)[:, None]


@dataclass(frozen=True)
class BatchWeights:
    """Per-image weights and sources of one batch, on the loss's device.

    Attributes:
        image: float32 [B] validated loss weights.
        source_ids: int64 [B] each image's index into ``source_names``.
        source_names: the sources present in the batch, in order of first appearance.
    """

    image: Tensor
    source_ids: Tensor
    source_names: tuple[str, ...]


def batch_weights(
    targets: Sequence[dict[str, Any]],
    *,
    device: torch.device | str,
    on_invalid: OnInvalid = "error",
    loss_weights: Tensor | None = None,
    source_ids: Tensor | None = None,
    source_names: Sequence[str] | None = None,
) -> BatchWeights:
    """The one place a batch's weights and sources are derived.

    Args:
        targets: one dict per image (``loss_weight`` defaults to 1.0, ``source`` to "unknown").
        device: device of the returned tensors.
        on_invalid: ``"error"`` raises ``ValueError`` naming the 0-based batch positions and their
            sources when a weight is NaN, infinite or negative; ``"fallback"`` warns and uses 1.0
            for the whole batch (the unweighted loss).
        loss_weights: [B] collated weights (``collate_relations``' ``loss_weights``); default:
            read from ``targets``.
        source_ids: [B] collated source indices; default: from the targets' ``source`` names.
        source_names: the names ``source_ids`` index; default: read from the targets.

    Returns:
        :class:`BatchWeights`. Host transfers only for weights given as accelerator tensors.
    """
    if on_invalid not in ("error", "fallback"):
        raise ValueError(f"on_invalid must be 'error' or 'fallback', got {on_invalid!r}")
    if loss_weights is not None:
        values = loss_weights.detach().to("cpu", torch.float64).reshape(-1).tolist()
    else:
        values = _target_weights(targets)
    if len(values) != len(targets):
        raise ValueError(f"{len(values)} loss_weights for a batch of {len(targets)} images")
    names = _image_sources(targets, source_ids, source_names)
    values = _validated(values, names, on_invalid)
    present = tuple(dict.fromkeys(names))
    ids = [present.index(n) for n in names]
    return BatchWeights(
        image=torch.tensor(values, dtype=torch.float32).to(device, non_blocking=True),
        source_ids=torch.tensor(ids, dtype=torch.int64).to(device, non_blocking=True),
        source_names=present,
    )


def _image_sources(
    targets: Sequence[dict[str, Any]], source_ids: Tensor | None, names: Sequence[str] | None
) -> list[str]:
    """Each image's source name."""
    if source_ids is None:
        return [str(t.get("source", "unknown")) for t in targets]
    ids = source_ids.detach().cpu().reshape(-1).tolist()
    if names is None:
        return [str(t.get("source", f"source{i}")) for t, i in zip(targets, ids)]
    return [str(names[i]) for i in ids]


def _target_weights(targets: Sequence[dict[str, Any]]) -> list[float]:
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


def _validated(values: list[float], names: list[str], on_invalid: OnInvalid) -> list[float]:
    bad = [i for i, v in enumerate(values) if not (math.isfinite(v) and v >= 0.0)]
    if not bad:
        return values
    details = ", ".join(f"position {i} (source={names[i]!r}, loss_weight={values[i]})" for i in bad)
    message = f"invalid loss_weight, expected finite and >= 0: {details}"
    if on_invalid == "error":
        raise ValueError(message)
    warnings.warn(f"{message}; falling back to unweighted loss for this batch", stacklevel=3)
    return [1.0] * len(values)
