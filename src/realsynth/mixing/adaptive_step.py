"""One adaptive-mixing decision inside the training loop: measure, decide, tell the sampler.

The sampler runs in the process that trains and hands loader workers ``(index, step, weight)``
triples, so a decision pushed into it reaches every batch drawn after it, whoever builds the
batch. The decision's step is at or past the sampler's horizon, before which no batch has been
drawn (the sampler refuses to draw past it), so no batch depends on when it was prefetched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from realsynth.data.collate import collate_relations
from realsynth.mixing.adaptive import AdaptiveMixer
from realsynth.mixing.alignment import measure_sources
from realsynth.mixing.holdout import holdout_items
from realsynth.modeling.criterion import RelationCriterion
from realsynth.utils.distributed import get_rank, get_world_size


def adapt_after_step(
    mixer: AdaptiveMixer,
    *,
    step: int,
    batch: dict[str, Any],
    model: nn.Module,
    criterion: RelationCriterion,
    sampler: Any,
    holdout: Dataset,
    holdout_batch: int,
    device: torch.device,
) -> dict[str, Any]:
    """Measures the alignment (``mixer.score``) after completed step ``step`` on its batch and
    a holdout batch, decides, and puts the new shares (and, with ``adapt_weights``, loss
    weights) in force in the sampler from ``step + interval``.

    Returns:
        the ``adaptive`` record for ``metrics.jsonl``: the measured and smoothed alignment, and
        the shares and weights decided, per source.
    """
    items = holdout_items(
        len(holdout), mixer.decisions, holdout_batch, get_rank(), get_world_size()
    )
    held = collate_relations([holdout[i] for i in items])
    measured = measure_sources(
        getattr(model, "module", model),
        criterion,
        batch,
        held,
        len(mixer.names),
        device,
        score=mixer.score,
    )
    decision = mixer.decide(step, measured.values, measured.parts)
    sampler.change_mix(
        decision.step,
        horizon=decision.step + mixer.interval,
        ratios=decision.ratios,
        weights=decision.weights if mixer.adapt_weights else None,
    )
    record: dict[str, Any] = {"kind": "adaptive", "step": step, "from_step": decision.step}
    for k, name in enumerate(mixer.names):
        if decision.alignment[k] is not None:
            record[f"alignment/{name}"] = decision.alignment[k]
        if decision.smoothed[k] is not None:
            record[f"smoothed_alignment/{name}"] = decision.smoothed[k]
        record[f"decided_share/{name}"] = decision.ratios[k]
        record[f"decided_weight/{name}"] = decision.weights[k]
    return record
