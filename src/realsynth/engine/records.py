"""Per-step log records: loss terms, total, per-source diagnostics, reduced over ranks."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from realsynth.modeling.criterion import RelationCriterion
from realsynth.utils.distributed import all_reduce_sum, get_world_size


def loss_record(
    losses: dict[str, Tensor], total: Tensor, criterion: RelationCriterion, sources: list[str]
) -> dict[str, float]:
    """Every loss term, the total, and each source's unweighted diagnostics, as floats.

    ``source_loss/<name>`` is the source's unweighted loss combined with the loss coefficients,
    over the final decoder layer's terms: the number to compare between real and synthetic.
    A source absent from this batch gets NaN (``reduce_record`` ignores NaN across ranks).
    One device->host transfer for the whole record.
    """
    coefficients = criterion.coefficients
    base_terms = list(coefficients)
    keys = [k for k in losses if criterion.coefficient(k) is not None] + ["total"]
    values = [losses[k].detach() for k in keys[:-1]] + [total.detach()]
    nan = torch.tensor(float("nan"), device=total.device)
    for name in sources:
        diag = [(t, losses.get(f"diag/{t}/{name}")) for t in base_terms]
        for term, value in diag:
            keys.append(f"diag/{term}/{name}")
            values.append(nan if value is None else value.detach())
        keys.append(f"source_loss/{name}")
        present = [coefficients[t] * v.detach() for t, v in diag if v is not None]
        values.append(torch.stack(present).sum() if present else nan)
    flat = torch.stack([v.float().reshape(()) for v in values]).tolist()
    return dict(zip(keys, flat))


def reduce_record(record: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average every scalar over ranks, ignoring NaN (a source absent from a rank's batch).

    Keys whose value is NaN on every rank are dropped, so the log never holds NaN.
    """
    keys = sorted(record)
    values = torch.tensor([record[k] for k in keys], dtype=torch.float64, device=device)
    if get_world_size() > 1:
        present = torch.isfinite(values)
        packed = torch.stack([torch.where(present, values, 0.0), present.double()])
        all_reduce_sum(packed)
        values = packed[0] / packed[1]
    return {k: v for k, v in zip(keys, values.tolist()) if math.isfinite(v)}


def progress_postfix(record: dict[str, float], kinds: dict[str, str]) -> dict[str, str]:
    """Short progress-bar fields: total loss and the real / synthetic unweighted losses."""
    postfix = {"loss": f"{record.get('total', float('nan')):.3f}"}
    for kind in ("real", "synthetic"):
        values = [
            v
            for k, v in record.items()
            if k.startswith("source_loss/") and kinds.get(k.split("/", 1)[1]) == kind
        ]
        if values:
            postfix[kind] = f"{sum(values) / len(values):.3f}"
    return postfix
