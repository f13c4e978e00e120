"""How well each source's gradient points where the real holdout's does (adaptive mixing).

One measurement costs one extra forward pass of the training batch, one backward pass per
source through it, and one forward and backward pass of a holdout batch. The model runs in eval
mode (no dropout; batch norm uses its running statistics, which the measurement must not move),
without the DDP wrapper: each rank differentiates its own images, the per-source gradients are
summed over ranks in one all-reduce (the criterion's divisors are already global), so every rank
gets the same numbers, those of one process on the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from realsynth.data.batch_transport import batch_images
from realsynth.data.collate import target_to_device
from realsynth.modeling.criterion import RelationCriterion
from realsynth.utils.distributed import all_reduce_sum

__all__ = ["source_alignment"]


def source_alignment(
    model: nn.Module,
    criterion: RelationCriterion,
    batch: dict[str, Any],
    holdout: dict[str, Any],
    num_sources: int,
    device: torch.device,
) -> list[float | None]:
    """Cosine between each source's training-loss gradient and the holdout-loss gradient.

    Args:
        model: the unwrapped model (no DDP).
        criterion: the run's criterion.
        batch: the collated training batch (``images``, ``pixel_mask``, ``targets``,
            ``source_ids`` int64 [B]).
        holdout: a collated holdout batch.
        num_sources: K; source ids are ``0 .. K - 1``.
        device: where the model lives.

    Returns:
        K cosines in [-1, 1], None for a source with no item in the (global) batch.
    """
    was_training = model.training
    model.eval()
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        source_ids = batch["source_ids"]
        outputs = _forward(model, batch, device)
        targets = [target_to_device(t, device) for t in batch["targets"]]
        grads, counts = [], []
        for k in range(num_sources):
            mask = (source_ids == k).to(torch.float32)
            # Weights 1 on source k and 0 elsewhere: the loss of source k's items; the common
            # divisor of the whole batch scales it, which a cosine does not see.
            losses = criterion(outputs, targets, loss_weights=mask, source_ids=source_ids)
            grads.append(_flat_grad(criterion.total_loss(losses), params, retain=True))
            counts.append(mask.sum())
        held = criterion(
            _forward(model, holdout, device),
            [target_to_device(t, device) for t in holdout["targets"]],
        )
        grads.append(_flat_grad(criterion.total_loss(held), params, retain=False))
        stacked = torch.stack(grads)
        present = torch.stack(counts).to(stacked.device)
        all_reduce_sum(stacked)
        all_reduce_sum(present)
    finally:
        model.train(was_training)
    reference = stacked[-1]
    out: list[float | None] = []
    for k in range(num_sources):
        norms = stacked[k].norm() * reference.norm()
        if present[k] == 0 or norms == 0:
            out.append(None)
        else:
            out.append(float((stacked[k] @ reference) / norms))
    return out


def _forward(model: nn.Module, batch: dict[str, Any], device: torch.device) -> Any:
    images = batch_images(batch, device)
    mask = batch["pixel_mask"].to(device, non_blocking=True)
    return model(images, mask)


def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor], *, retain: bool) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    ).double()
