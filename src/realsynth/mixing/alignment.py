"""How well each source's gradient points where the real holdout's does (adaptive mixing).

Two scores (``score``), both in [-1, 1]:

- ``cosine``: the cosine between the gradient of each source's items and the holdout batch's
  gradient. A gradient from fewer items is noisier, and noise lengthens a vector without
  moving its expected inner product, so this cosine shrinks with the source's item count: a
  source with a smaller share scores lower whatever its data (docs/adaptive.md).
- ``projection``: the inner product of the per-item mean gradients of source k and of the
  holdout, whose expectation ``mu_k . mu_h`` does not depend on the count, in units of the
  noise-free lengths of the whole training batch's and the holdout's mean gradients:

      score_k = (g_k . g_h) / sqrt((g_BA . g_BB) (g_hA . g_hB))

  ``A`` and ``B`` are two halves of the training batch (alternate items of every source) and
  of the holdout batch: their mean gradients are independent estimates of the same mean, so
  ``g_A . g_B`` estimates ``|mu|^2`` without the noise term that ``|g|^2`` carries. The
  denominator is common to all sources (shares do not move it); the mixer averages each part
  over decisions before taking the ratio (:func:`realsynth.mixing.adaptive.projection_score`).

One measurement costs one extra forward pass of the training batch, one backward pass per
source (two with ``projection``, one per half) through it, and one forward and one backward
pass (two with ``projection``) of a holdout batch. The model runs in eval mode (no dropout;
batch norm uses its running statistics, which the measurement must not move), without the DDP
wrapper: each rank
differentiates its own images, the per-source gradients are summed over ranks in one all-reduce
(the criterion's divisors are already global), so every rank gets the same numbers, those of
one process on the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from realsynth.data.batch_transport import batch_images
from realsynth.data.collate import target_to_device
from realsynth.mixing.adaptive import projection_score
from realsynth.modeling.criterion import RelationCriterion
from realsynth.utils.distributed import all_reduce_sum

__all__ = [
    "SCORES",
    "Measurement",
    "cosine_scores",
    "measure_sources",
    "projection_parts",
    "source_gradients",
]

SCORES = ("cosine", "projection")


@dataclass(frozen=True)
class Measurement:
    """One measurement: per source its score now (None: not measured) and, with
    ``projection``, the parts the mixer smooths before taking their ratio."""

    values: list[float | None]
    parts: list[list[float] | None] | None = None


def measure_sources(
    model: nn.Module,
    criterion: RelationCriterion,
    batch: dict[str, Any],
    holdout: dict[str, Any],
    num_sources: int,
    device: torch.device,
    score: str = "cosine",
) -> Measurement:
    """Each source's score (``score``, one of :data:`SCORES`) against the holdout.

    Args:
        model: the unwrapped model (no DDP).
        criterion: the run's criterion.
        batch: the collated training batch (``images``, ``pixel_mask``, ``targets``,
            ``source_ids`` int64 [B]).
        holdout: a collated holdout batch.
        num_sources: K; source ids are ``0 .. K - 1``.
        device: where the model lives.
        score: ``cosine`` or ``projection`` (module docstring).

    Returns:
        K scores in [-1, 1], None for a source with no item in the (global) batch (with
        ``projection`` also the parts of each score).
    """
    if score not in SCORES:
        raise ValueError(f"unknown alignment score {score!r}; one of {', '.join(SCORES)}")
    halves = score == "projection"
    grads, counts = source_gradients(
        model, criterion, batch, holdout, num_sources, device, halves=halves
    )
    if not halves:
        return Measurement(cosine_scores(grads, counts))
    per_item = getattr(criterion, "normalization", "count") == "count"
    parts = projection_parts(grads, counts, per_item=per_item)
    return Measurement([None if p is None else projection_score(p) for p in parts], parts)


def source_gradients(
    model: nn.Module,
    criterion: RelationCriterion,
    batch: dict[str, Any],
    holdout: dict[str, Any],
    num_sources: int,
    device: torch.device,
    *,
    halves: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss gradients of each source's items and of the holdout batch, summed over ranks.

    Returns:
        (float64 [R, P] flat gradients, float64 [R] item counts): R = K + 1 rows (sources
        ``0 .. K - 1``, then the holdout), or with ``halves`` R = 2 (K + 1): rows ``2 r`` and
        ``2 r + 1`` are the halves A and B of row ``r``'s items (alternate items of the source,
        in batch order, on each rank). A row's loss is the criterion's total loss with weight
        1 on its items and 0 elsewhere (every term, auxiliary layers included, counts as in
        training, over the whole batch's divisor).
    """
    was_training = model.training
    model.eval()
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        source_ids = batch["source_ids"]
        masks = [(source_ids == k).to(torch.float32) for k in range(num_sources)]
        rows = _split(masks) if halves else masks
        grads = _masked_grads(model, criterion, batch, device, rows, params, source_ids)
        held_rows = _split([torch.ones(len(holdout["targets"]))]) if halves else [None]
        grads += _masked_grads(model, criterion, holdout, device, held_rows, params, None)
        stacked = torch.stack(grads)
        counts = [m.sum() for m in rows]
        counts += [m.sum() for m in held_rows] if halves else [torch.tensor(1.0)]
        present = torch.stack(counts).double().to(stacked.device)
        all_reduce_sum(stacked)
        all_reduce_sum(present)
    finally:
        model.train(was_training)
    return stacked, present


def cosine_scores(grads: torch.Tensor, counts: torch.Tensor) -> list[float | None]:
    """Cosine of rows ``0 .. R - 2`` of ``grads`` [R, P] with the last row (None for a row
    with a zero count [R] or a zero gradient)."""
    reference = grads[-1]
    out: list[float | None] = []
    for k in range(grads.shape[0] - 1):
        norms = grads[k].norm() * reference.norm()
        if counts[k] == 0 or norms == 0:
            out.append(None)
        else:
            out.append(float((grads[k] @ reference) / norms))
    return out


def projection_parts(
    grads: torch.Tensor, counts: torch.Tensor, *, per_item: bool = True
) -> list[list[float] | None]:
    """The parts of every source's ``projection`` score (module docstring), to be smoothed
    over decisions before their ratio is taken (:func:`realsynth.mixing.adaptive.projection_score`).

    Args:
        grads: float64 [2 (K + 1), P] half gradients as :func:`source_gradients` gives them.
        counts: float64 [2 (K + 1)] items per half.
        per_item: the rows are sums over their items (the criterion's ``count``
            normalization), divided here by the counts; False: already means (``weight``).

    Returns:
        per source ``[g_k . g_h, g_BA . g_BB, |g_BA| |g_BB|, g_hA . g_hB, |g_hA| |g_hB|]``
        (per-item mean gradients; ``B`` the training batch, ``h`` the holdout); None for a
        source without items.
    """
    n = counts.view(-1, 2)
    sums = grads.view(-1, 2, grads.shape[1]) * (1.0 if per_item else n[:, :, None])
    # The whole training batch's halves: the sources' halves together.
    batch = torch.stack([sums[:-1].sum(0), sums[-1]])
    batch_n = torch.stack([n[:-1].sum(0), n[-1]])
    whole = sums.sum(1) / n.sum(1).clamp(min=1)[:, None]
    halves = batch / batch_n.clamp(min=1)[:, :, None]
    products = [(a @ b, a.norm() * b.norm()) for a, b in halves]
    out: list[list[float] | None] = []
    for k in range(sums.shape[0] - 1):
        if n[k].sum() == 0 or batch_n.min() == 0:
            out.append(None)
            continue
        parts = [whole[k] @ whole[-1], *products[0], *products[1]]
        out.append([float(x) for x in parts])
    return out


def _split(masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each float32 [B] 0/1 mask as two: its 1s alternately (in order) in A and in B."""
    out = []
    for mask in masks:
        order = mask.cumsum(0) - 1  # the position of each selected item among the selected
        even = (order.remainder(2) == 0).to(mask.dtype)
        out += [mask * even, mask * (1 - even)]
    return out


def _masked_grads(
    model: nn.Module,
    criterion: RelationCriterion,
    batch: dict[str, Any],
    device: torch.device,
    masks: list[torch.Tensor | None],
    params: list[torch.Tensor],
    source_ids: torch.Tensor | None,
) -> list[torch.Tensor]:
    """One forward pass of ``batch``, then the flat gradient of the loss weighted by each mask
    (None: the batch's own weights)."""
    outputs = _forward(model, batch, device)
    targets = [target_to_device(t, device) for t in batch["targets"]]
    grads = []
    for i, mask in enumerate(masks):
        kwargs = {} if mask is None else {"loss_weights": mask, "source_ids": source_ids}
        # Weights 1 on the row's items and 0 elsewhere: the loss of those items; the common
        # divisor of the whole batch scales it.
        losses = criterion(outputs, targets, **kwargs)
        last = i == len(masks) - 1
        grads.append(_flat_grad(criterion.total_loss(losses), params, retain=not last))
    return grads


def _forward(model: nn.Module, batch: dict[str, Any], device: torch.device) -> Any:
    images = batch_images(batch, device)
    mask = batch["pixel_mask"].to(device, non_blocking=True)
    return model(images, mask)


def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor], *, retain: bool) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    ).double()
