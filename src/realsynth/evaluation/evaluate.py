"""The scoring pass: a model over validation sources, one evaluator per source.

With several processes each rank scores a disjoint shard of every validation set; the per-image
records are gathered and put back in dataset order, so the summary equals the single-process one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from realsynth.data.batch_transport import batch_images
from realsynth.evaluation.recall import SceneGraphEvaluator
from realsynth.modeling.postprocess import ground_truth_from_target, relation_predictions
from realsynth.utils.distributed import get_world_size, is_dist_avail_and_initialized


@torch.no_grad()
def evaluate_sources(
    model: nn.Module,
    loaders: dict[str, DataLoader],
    *,
    device: torch.device,
    top_k: int,
    new_evaluator: Callable[[], SceneGraphEvaluator],
    autocast: Any = None,
) -> dict[str, SceneGraphEvaluator]:
    """Score ``model`` on every validation source: one evaluator per source holding every image's
    record (``.summarize()`` gives R@K, ngR@K, mR@K and zsR@K; :func:`summaries` all of them).

    Under the ``sgb`` protocol predictions are scaled to the annotated image's pixels
    (``eval_size``) and compared with the ``eval_boxes``; under ``continuous`` both stay
    normalized.

    Args:
        model: maps (images [B, 3, H, W], pixel_mask [B, H, W]) to the relation outputs.
        loaders: per source, a loader of collated batches (this rank's shard).
        device: where the model runs.
        top_k: predicted triplets kept per image (>= the largest K).
        new_evaluator: makes an empty evaluator (protocol, ks, zero-shot triplets).
        autocast: optional autocast context (bf16 on CUDA).

    Returns:
        ``{source: evaluator}`` with the records of every rank in dataset order; the same on
        every rank.
    """
    was_training = model.training
    model.eval()
    results = {}
    for name, loader in loaders.items():
        evaluator = new_evaluator()
        pixels = evaluator.protocol == "sgb"
        for batch in loader:
            with autocast or contextlib.nullcontext():
                outputs = model(batch_images(batch, device), batch["pixel_mask"].to(device))
            outputs = {k: v.float() for k, v in outputs.items() if isinstance(v, torch.Tensor)}
            targets = batch["targets"]
            sizes = torch.stack([t["eval_size"] for t in targets]) if pixels and targets else None
            predictions = relation_predictions(outputs, sizes, top_k=top_k)
            truths = [ground_truth_from_target(t, pixels=pixels) for t in targets]
            try:
                evaluator.update(predictions, truths)
            except ValueError as exc:
                names = [t.get("file_name", t.get("image_id")) for t in targets]
                raise ValueError(f"validation source {name!r}, images {names}: {exc}") from None
        merged = new_evaluator()
        merged.add_records(gather_in_order(evaluator.records))
        results[name] = merged
    model.train(was_training)
    return results


def summaries(evaluators: dict[str, SceneGraphEvaluator]) -> dict[str, dict[str, float]]:
    """``{source: {"R@20": r, ..., "mR@100": r}}`` with recalls in [0, 1].

    Raises:
        ValueError: a source without any image holding a ground-truth relation (names it).
    """
    results = {}
    for name, evaluator in evaluators.items():
        try:
            results[name] = evaluator.summarize()
        except ValueError as exc:
            raise ValueError(f"validation source {name!r}: {exc}") from None
    return results


def gather_in_order(records: np.ndarray) -> np.ndarray:
    """Concatenate every rank's rows in dataset order (rank r holds items r, r+W, r+2W, ...)."""
    world = get_world_size()
    if world == 1 or not is_dist_avail_and_initialized():
        return records
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, records)
    total = sum(len(p) for p in parts)
    out = np.zeros((total, records.shape[1]), dtype=np.float64)
    for rank, part in enumerate(parts):
        out[rank::world] = part
    return out
