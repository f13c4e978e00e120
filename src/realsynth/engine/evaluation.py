"""Running a model over validation sources and scoring it (``realsynth eval`` and the trainer).

With several processes each rank scores a disjoint shard of every validation set; the per-image
records are gathered and put back in dataset order, so the summary equals the single-process one.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from realsynth.config import load_config
from realsynth.engine.build import build_evaluator_factory, build_model_and_criterion
from realsynth.engine.checkpoint import load_checkpoint
from realsynth.engine.data_setup import build_data, build_test_sets, evaluation_loaders
from realsynth.engine.launch import resolve_device
from realsynth.engine.recall import SceneGraphEvaluator
from realsynth.engine.tables import format_table
from realsynth.modeling.postprocess import ground_truth_from_target, relation_predictions
from realsynth.utils.atomic import atomic_write, atomic_write_json
from realsynth.utils.distributed import get_rank, get_world_size, is_dist_avail_and_initialized

#: Every final evaluation's per-image records, in the run folder (see :func:`save_records`).
EVAL_RECORDS = "eval_records.npz"


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
                outputs = model(batch["images"].to(device), batch["pixel_mask"].to(device))
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


def save_records(path: Path, evaluators: dict[str, SceneGraphEvaluator]) -> Path:
    """Every image's record per source (``.npz``, one array per source), for the statistics of
    ``realsynth compare``; the evaluator settings go along so the rows can be summarized again."""
    arrays = {name: ev.records for name, ev in evaluators.items()}
    first = next(iter(evaluators.values()), None)
    meta = {}
    if first is not None:
        meta = {
            "ks": np.array(first.ks),
            "protocol": np.array(first.protocol),
            "num_predicates": np.array(first.num_predicates),
        }
        if first.zero_shot is not None:
            meta["zero_shot"] = first.zero_shot
    buffer = io.BytesIO()
    np.savez(buffer, **{f"records/{k}": v for k, v in arrays.items()}, **meta)
    return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


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


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data_config: str | Path | None = None,
    overrides: Sequence[str] = (),
    output: str | Path | None = None,
    split: str = "val",
    quiet: bool = False,
) -> dict[str, dict[str, float]]:
    """``realsynth eval``: score a run folder or checkpoint on its (or another config's) sets.

    The model settings come from the config saved with the checkpoint; ``data_config`` replaces
    the datasets. Prints the table (unless ``quiet``) and writes the results to ``output``, by
    default ``eval_<checkpoint>[_<data config>][_test].json`` in the run folder
    (``eval_last.json``, ``eval_best_other.json``, ...): the run's own ``eval.json`` is never
    replaced. Every image's records go beside it, ``<output stem>_records.npz``.

    Args:
        split: ``val`` (the validation sets) or ``test`` (each source's test split, for reports
            that model selection never saw).
    """
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    state = load_checkpoint(checkpoint, required=("model", "config"))
    cfg = load_config(None, overrides, base_yaml=state["config"])
    if data_config is not None:
        datasets = OmegaConf.to_container(load_config(data_config).DATASETS)
        cfg = OmegaConf.merge(cfg, {"DATASETS": datasets})
    data = build_data(cfg)
    sets = data.val if split == "val" else build_test_sets(cfg)
    if not sets:
        raise ValueError(f"{checkpoint}: no source has a {split} set (VAL_PATH / TEST_PATH)")
    _check_label_space(checkpoint, state["model"], data)
    device = resolve_device(cfg.MODEL.DEVICE)
    model, _ = build_model_and_criterion(cfg, data, device)
    model.load_state_dict(state["model"])
    evaluators = evaluate_sources(
        model,
        evaluation_loaders(cfg, sets),
        device=device,
        top_k=cfg.TEST.TOP_K,
        new_evaluator=build_evaluator_factory(cfg, data),
    )
    results = summaries(evaluators)
    if get_rank() == 0:
        target = (
            Path(output) if output is not None else _default_output(checkpoint, data_config, split)
        )
        atomic_write_json(target, results)
        save_records(target.with_name(f"{target.stem}_records.npz"), evaluators)
        if not quiet:
            print(format_table(results))
            print(f"written to {target}")
    return results


def _default_output(checkpoint: str | Path, data_config: str | Path | None, split: str) -> Path:
    """``eval_<checkpoint stem>[_<data config stem>][_test].json`` in the run folder."""
    checkpoint = Path(checkpoint)
    stem = "last" if checkpoint.is_dir() else checkpoint.stem
    suffix = f"_{Path(data_config).stem}" if data_config is not None else ""
    suffix += "_test" if split == "test" else ""
    return _run_folder(checkpoint) / f"eval_{stem}{suffix}.json"


def _check_label_space(checkpoint: str | Path, weights: dict[str, Any], data: Any) -> None:
    """The validation data must have the label space the checkpoint was trained on."""
    trained = (
        weights["subject_class.weight"].shape[0] - 1,
        weights["relation_class.weight"].shape[0] - 1,
    )
    given = (len(data.classes), len(data.predicates))
    if trained != given:
        raise ValueError(
            f"{checkpoint}: trained for {trained[0]} classes and {trained[1]} predicates, but the "
            f"evaluation data has {given[0]} and {given[1]}; evaluate on data of the same labels"
        )


def _run_folder(checkpoint: Path) -> Path:
    """The run folder of a checkpoint argument: itself, or the folder above ``checkpoints/``."""
    if checkpoint.is_dir():
        return checkpoint
    parent = checkpoint.parent
    return parent.parent if parent.name == "checkpoints" else parent
