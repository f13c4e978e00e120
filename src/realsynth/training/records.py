"""Per-step log records: loss terms, total, per-source diagnostics, reduced over ranks."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from realsynth.modeling.criterion import RelationCriterion
from realsynth.utils.distributed import all_reduce_sum, get_world_size


def loss_values(
    losses: dict[str, Tensor], total: Tensor, criterion: RelationCriterion, sources: list[str]
) -> tuple[tuple[str, ...], Tensor]:
    """Every loss term, the total, and each source's unweighted diagnostics, on the device.

    ``source_loss/<name>`` is the source's unweighted loss combined with the loss coefficients,
    over the final decoder layer's terms: the number to compare between real and synthetic.
    A source absent from this batch gets NaN (:func:`reduce_records` ignores NaN across ranks).
    No host transfer: the trainer fetches ``SOLVER.LOG_PERIOD`` steps at once.

    Returns:
        (keys, float32 [n] detached values in the same order; the keys depend only on the
        criterion and ``sources``, so every step of a run has the same).
    """
    coefficients = criterion.coefficients
    keys = [k for k in losses if criterion.coefficient(k) is not None] + ["total"]
    values = [losses[k].detach() for k in keys[:-1]] + [total.detach()]
    nan = torch.tensor(float("nan"), device=total.device)
    for name in sources:
        diag = [(t, losses.get(f"diag/{t}/{name}")) for t in coefficients]
        for term, value in diag:
            keys.append(f"diag/{term}/{name}")
            values.append(nan if value is None else value.detach())
        keys.append(f"source_loss/{name}")
        present = [coefficients[t] * v.detach() for t, v in diag if v is not None]
        values.append(torch.stack(present).sum() if present else nan)
    return tuple(keys), torch.stack([v.float().reshape(()) for v in values])


def mix_targets(sampler: Any, names: list[str], step: int) -> dict[str, float]:
    """Every source's target share and loss weight in force at optimizer step ``step``
    (0-based), as the sampler holds them, as ``target_share/<name>`` and ``weight/<name>``;
    empty for a batch sampler that is not a :class:`~realsynth.mixing.sampler.MixedBatchSampler`.
    """
    if not hasattr(sampler, "target_shares") or not hasattr(sampler, "weights_at"):
        return {}
    out = {f"target_share/{n}": share for n, share in zip(names, sampler.target_shares(step))}
    out.update({f"weight/{n}": weight for n, weight in zip(names, sampler.weights_at(step))})
    return out


def reduce_records(keys: tuple[str, ...], values: Tensor) -> list[dict[str, float]]:
    """Average every step's values over ranks, ignoring NaN, and bring them to the host.

    Args:
        keys: the n value names.
        values: [S, n] values of S steps on this rank.

    Returns:
        S dicts; a key whose value is NaN on every rank is left out, so the log never holds NaN.
        One all-reduce and one device->host transfer for all S steps.
    """
    values = values.to(torch.float64)
    if get_world_size() > 1:
        present = torch.isfinite(values)
        packed = torch.stack([torch.where(present, values, 0.0), present.double()])
        all_reduce_sum(packed)
        values = packed[0] / packed[1]
    return [{k: v for k, v in zip(keys, row) if math.isfinite(v)} for row in values.cpu().tolist()]


def progress_postfix(
    record: dict[str, float], kinds: dict[str, str], *, share: bool = False
) -> dict[str, str]:
    """Short progress-bar fields: total loss and the real / synthetic unweighted losses (and,
    with ``share``, the real share of the batches in force)."""
    postfix = {"loss": f"{record.get('total', float('nan')):.3f}"}
    if share:
        real = [v for k, v in record.items() if k.startswith("target_share/")
                and kinds.get(k.split("/", 1)[1]) == "real"]  # fmt: skip
        postfix["real_share"] = f"{sum(real):.2f}"
    for kind in ("real", "synthetic"):
        values = [
            v
            for k, v in record.items()
            if k.startswith("source_loss/") and kinds.get(k.split("/", 1)[1]) == kind
        ]
        if values:
            postfix[kind] = f"{sum(values) / len(values):.3f}"
    return postfix
