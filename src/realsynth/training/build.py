"""Config -> objects: the one place where config keys become constructor keywords."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from realsynth.config import ConfigError
from realsynth.config.schema import (
    BackboneNorm,
    LrSchedule,
    One2ManyScheme,
    PredicateClassWeights,
)
from realsynth.data.collate import collate_relations
from realsynth.data.stats import combine_statistics, compute_statistics, frequency_class_weights
from realsynth.evaluation.recall import SceneGraphEvaluator
from realsynth.mixing.adaptive import AdaptiveMixer
from realsynth.mixing.mixed_dataset import Source, build_mixed_loader
from realsynth.mixing.step_schedule import StepSchedule
from realsynth.modeling.criterion import RelationCriterion
from realsynth.modeling.heads import loss_coefficients
from realsynth.modeling.matcher import HungarianMatcher
from realsynth.modeling.model import PRESETS, build_model
from realsynth.modeling.one_to_many import QualityAwareMatcher
from realsynth.modeling.predicate_groups import GroupingError, predicate_groups
from realsynth.training.data_setup import RunData, build_data, run_sources
from realsynth.training.loop import LoopSettings
from realsynth.utils.distributed import (
    get_rank,
    get_world_size,
    is_dist_avail_and_initialized,
    resolve_device,
)

__all__ = [
    "build_data",
    "build_device",
    "build_model_and_criterion",
    "build_optimizer",
    "build_scheduler",
    "build_train_loader",
    "wrap_distributed",
    "print_run_summary",
    "best_metric_key",
    "build_evaluator_factory",
    "build_loop_settings",
]


def build_device(cfg: DictConfig) -> torch.device:
    """``MODEL.DEVICE`` -> this process's device (its GPU under torchrun)."""
    try:
        return resolve_device(cfg.MODEL.DEVICE)
    except ValueError as exc:
        raise ConfigError(f"MODEL.DEVICE: {exc}", "MODEL.DEVICE") from None


def build_model_and_criterion(
    cfg: DictConfig, data: RunData, device: torch.device
) -> tuple[nn.Module, RelationCriterion]:
    """The relation transformer (``MODEL.PRESET`` + overrides) and its weighted set criterion."""
    overrides = {
        key.lower(): cfg.MODEL[key]
        for key in ("NUM_QUERIES", "D_MODEL", "ENC_LAYERS", "DEC_LAYERS", "DIM_FEEDFORWARD")
        if cfg.MODEL[key] is not None
    }
    preset = cfg.MODEL.PRESET.value
    queries = overrides.get("num_queries", PRESETS[preset]["num_queries"])
    overrides["num_queries"] = queries * cfg.MODEL.SPEAQ.MULTIPLY_QUERY
    if cfg.MODEL.BACKBONE_CHANNELS:
        overrides["backbone_channels"] = tuple(cfg.MODEL.BACKBONE_CHANNELS)
    if cfg.MODEL.BACKBONE_NORM is not BackboneNorm.default:
        overrides["backbone_norm"] = cfg.MODEL.BACKBONE_NORM.value
    model = build_model(preset, len(data.classes), len(data.predicates), **overrides)
    crit = cfg.MODEL.CRITERION
    criterion = RelationCriterion(
        len(data.classes),
        len(data.predicates),
        predicate_class_weights=predicate_class_weights(cfg, data),
        matcher=build_matcher(cfg, data, overrides["num_queries"]),
        match_independent=cfg.MODEL.SPEAQ.MATCH_INDEPENDENT,
        no_object_class_weight=crit.NO_OBJECT_CLASS_WEIGHT,
        no_relation_class_weight=crit.NO_RELATION_CLASS_WEIGHT,
        loss_coefficients=loss_coefficients(
            crit.CLASS_COEFFICIENT, crit.L1_COEFFICIENT, crit.GIOU_COEFFICIENT
        ),
        ce_scope=crit.CE_SCOPE.value,
        normalization=crit.NORMALIZATION.value,
        on_invalid_weight=crit.ON_INVALID_WEIGHT.value,
        source_names=data.names,
    )
    return model.to(device), criterion.to(device)


def build_matcher(cfg: DictConfig, data: RunData, num_queries: int) -> HungarianMatcher:
    """DETR's one-to-one matcher, or SpeaQ's (``MODEL.SPEAQ``: copies and the group mask, whose
    predicate frequencies are those of ``PREDICATE_FREQUENCY_SOURCE``)."""
    crit, speaq = cfg.MODEL.CRITERION, cfg.MODEL.SPEAQ
    costs = {
        "cost_class": crit.COST_CLASS,
        "cost_bbox": crit.COST_BBOX,
        "cost_giou": crit.COST_GIOU,
    }
    if speaq.ONE2MANY_SCHEME is One2ManyScheme.none and not speaq.USE_GROUP_MASK:
        return HungarianMatcher(**costs)
    groups = None
    if speaq.USE_GROUP_MASK:
        try:
            groups = predicate_groups(predicate_counts(cfg, data), speaq.NUM_GROUPS, num_queries)
        except GroupingError as exc:
            # num_queries is NUM_QUERIES (or the preset's) x MULTIPLY_QUERY.
            queries = (
                f"MODEL.NUM_QUERIES x MODEL.SPEAQ.MULTIPLY_QUERY = "
                f"{num_queries // speaq.MULTIPLY_QUERY} x {speaq.MULTIPLY_QUERY} = {num_queries}"
            )
            more = (
                f", or raise the relation queries ({queries}) to at least {exc.min_queries}"
                if exc.min_queries is not None
                else f" (with {queries} relation queries)"
            )
            raise ConfigError(
                f"MODEL.SPEAQ.USE_GROUP_MASK: {exc.reason}; lower MODEL.SPEAQ.NUM_GROUPS="
                f"{speaq.NUM_GROUPS} to at most {exc.max_groups}{more}",
                ("MODEL.SPEAQ.NUM_GROUPS", "MODEL.SPEAQ.MULTIPLY_QUERY", "MODEL.NUM_QUERIES"),
            ) from None
        except ValueError as exc:
            raise ConfigError(f"MODEL.SPEAQ.USE_GROUP_MASK: {exc}", "MODEL.SPEAQ") from None
    return QualityAwareMatcher(
        scheme=speaq.ONE2MANY_SCHEME.value,
        top_k=speaq.ONE2MANY_K,
        combine=speaq.ONE2MANY_DYNAMIC_SCHEME.value,
        predicate_weight=speaq.ONE2MANY_PREDICATE_WEIGHT
        if speaq.ONE2MANY_PREDICATE_SCORE
        else None,
        groups=groups,
        **costs,
    )


def predicate_counts(cfg: DictConfig, data: RunData) -> np.ndarray:
    """Predicate counts [R] of ``MODEL.CRITERION.PREDICATE_FREQUENCY_SOURCE``: the real training
    sources by default (never synthetic statistics unless asked for), ``all``, or one source.

    Raises:
        ConfigError: the named source is not a training source, or it has no relation.
    """
    chosen = cfg.MODEL.CRITERION.PREDICATE_FREQUENCY_SOURCE
    if chosen == "real":
        names = [n for n in data.names if data.kinds[n] == "real"]
    elif chosen == "all":
        names = list(data.names)
    elif chosen in data.names:
        names = [chosen]
    else:
        raise ConfigError(
            f"MODEL.CRITERION.PREDICATE_FREQUENCY_SOURCE={chosen!r}: expected real, all or one "
            f"of the training sources {data.names}"
        )
    # Named by the run's source names, whatever a dataset calls itself.
    stats = [
        dataclasses.replace(compute_statistics(ds), source=name)
        for ds, name in zip(data.train, data.names)
    ]
    _, predicates = combine_statistics(stats, weights={n: float(n in names) for n in data.names})
    if predicates.sum() <= 0:
        raise ConfigError(
            f"MODEL.CRITERION.PREDICATE_FREQUENCY_SOURCE={chosen!r}: sources {names} hold no "
            "relation"
        )
    return predicates


def predicate_class_weights(cfg: DictConfig, data: RunData) -> torch.Tensor | None:
    """``MODEL.CRITERION.PREDICATE_CLASS_WEIGHTS``: None (all ones), or SpeaQ's frequency weights
    from :func:`predicate_counts`."""
    crit = cfg.MODEL.CRITERION
    if crit.PREDICATE_CLASS_WEIGHTS is PredicateClassWeights.none:
        return None
    values = frequency_class_weights(
        predicate_counts(cfg, data), alpha=crit.OVERSAMPLE_PARAM, beta=crit.UNDERSAMPLE_PARAM
    )
    return torch.as_tensor(values, dtype=torch.float32)


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW; backbone parameters get ``BASE_LR * BACKBONE_LR_MULTIPLIER``."""
    backbone, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (backbone if name.startswith("backbone.") else rest).append(param)
    solver = cfg.SOLVER
    groups = [{"params": rest, "lr": solver.BASE_LR}]
    if backbone:
        groups.append({"params": backbone, "lr": solver.BASE_LR * solver.BACKBONE_LR_MULTIPLIER})
    # foreach: one fused kernel per group instead of a Python loop over tensors; PyTorch picks it
    # by itself on CUDA only, and on the CPU it is ~3x faster for the tiny model's 100 tensors.
    return torch.optim.AdamW(
        groups, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY, foreach=True
    )


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer) -> Any:
    """Linear warmup over ``WARMUP_ITERS``, then cosine decay to 0 at ``MAX_ITER`` (or constant)."""
    solver = cfg.SOLVER
    warmup, total = solver.WARMUP_ITERS, solver.MAX_ITER
    cosine = solver.LR_SCHEDULE is LrSchedule.cosine

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_train_loader(
    cfg: DictConfig,
    data: RunData,
    device: torch.device | None = None,
    adaptive: AdaptiveMixer | None = None,
) -> DataLoader:
    """The mixed loader: per-rank batches of ``IMS_PER_BATCH`` with the exact source composition
    (shares decided online when ``adaptive`` is given).

    ``SOLVER.IMS_PER_BATCH`` is the *global* batch (detectron2's convention): each of W ranks
    loads ``IMS_PER_BATCH / W`` images.
    """
    world = get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is not divisible by the "
            f"{world} processes; use a multiple of {world}"
        )
    sources = [
        Source(
            name=name,
            dataset=dataset,
            kind=mix.kind,
            ratio=mix.ratio,
            loss_weight=mix.loss_weight,
            background_weight=mix.background_weight,
        )
        for name, dataset, mix in zip(data.names, data.train, data.mix)
    ]
    return build_mixed_loader(
        sources,
        cfg.SOLVER.IMS_PER_BATCH // world,
        seed=cfg.SEED,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=collate_relations,
        rank=get_rank(),
        world_size=world,
        replacement=cfg.DATALOADER.REPLACEMENT,
        pin_memory=device is not None and device.type == "cuda",
        share_horizon=None if adaptive is None else adaptive.initial_horizon,
    )


def build_adaptive(cfg: DictConfig, data: RunData) -> AdaptiveMixer | None:
    """``DATASETS.MULTI_DATASET.ADAPTIVE`` as keywords, or None when it is off."""
    md = cfg.DATASETS.MULTI_DATASET
    if not (md.ENABLED and md.ADAPTIVE.ENABLED):
        return None
    adaptive = md.ADAPTIVE
    key = "DATASETS.MULTI_DATASET.ADAPTIVE"
    holdout_batch, world = int(adaptive.HOLDOUT_BATCH), get_world_size()
    if holdout_batch < world:
        raise ConfigError(
            f"{key}.HOLDOUT_BATCH={holdout_batch}: every one of the {world} "
            "processes needs a holdout image per decision; use at least that many",
            key,
        )
    nodes = {src.NAME: src for src in run_sources(cfg)}

    def bound(name: str, key: str) -> float:
        own = nodes[name][key] if name in nodes else None
        return float(adaptive[key] if own is None else own)

    try:
        return AdaptiveMixer(
            names=data.names,
            kinds=[m.kind for m in data.mix],
            ratios=[_start_value(m.ratio) for m in data.mix],
            weights=[_start_value(m.loss_weight) for m in data.mix],
            interval=adaptive.INTERVAL,
            step_size=adaptive.STEP_SIZE,
            smoothing=adaptive.SMOOTHING,
            min_ratios=[bound(n, "MIN_RATIO") for n in data.names],
            max_ratios=[bound(n, "MAX_RATIO") for n in data.names],
            adapt_weights=adaptive.ADAPT_WEIGHTS,
            min_weight=adaptive.MIN_WEIGHT,
            max_weight=adaptive.MAX_WEIGHT,
        )
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}", key) from None


def _start_value(value: float | StepSchedule) -> float:
    return value.value(0) if isinstance(value, StepSchedule) else float(value)


def wrap_distributed(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` when a process group is up, else the model itself."""
    if not is_dist_avail_and_initialized():
        return model
    if device.type != "cuda":
        return DistributedDataParallel(model)
    # On GPUs BatchNorm statistics are synchronized, so every rank normalizes with the global
    # batch's statistics as one process would (gloo has no SyncBatchNorm: CPU ranks keep theirs).
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index])


def print_run_summary(cfg: DictConfig, data: RunData, loader: DataLoader) -> None:
    """Global batch, per-rank batch and per-rank composition, printed once at start."""
    world = get_world_size()
    per_rank = cfg.SOLVER.IMS_PER_BATCH // world
    parts = ", ".join(
        f"{name} ({mix.kind}) {_per_batch(mix.ratio, per_rank)} weight {_value(mix.loss_weight)}"
        for name, mix in zip(data.names, data.mix)
    )
    print(
        f"realsynth: {world} process(es), global batch {cfg.SOLVER.IMS_PER_BATCH}, "
        f"{per_rank} per rank: {parts}; {len(loader)} batches per rank per epoch; "
        f"{len(data.classes)} classes, {len(data.predicates)} predicates; "
        f"validation: {', '.join(data.val) or 'none'}; output: {cfg.OUTPUT_DIR}"
    )


def _per_batch(ratio: float | StepSchedule, per_rank: int) -> str:
    if isinstance(ratio, StepSchedule) and not ratio.is_constant:
        return f"share {ratio.describe()}"
    return f"{_start_value(ratio) * per_rank:.3g}/batch"


def _value(weight: float | StepSchedule) -> str:
    return weight.describe() if isinstance(weight, StepSchedule) else f"{weight:g}"


def build_loop_settings(cfg: DictConfig) -> LoopSettings:
    """The plain values the training loop runs by."""
    return LoopSettings(
        max_iter=cfg.SOLVER.MAX_ITER,
        log_period=cfg.SOLVER.LOG_PERIOD,
        eval_period=cfg.TEST.EVAL_PERIOD,
        checkpoint_period=cfg.SOLVER.CHECKPOINT_PERIOD,
        clip_grad_norm=cfg.SOLVER.CLIP_GRAD_NORM,
        amp=cfg.SOLVER.AMP,
        top_k=cfg.TEST.TOP_K,
        holdout_batch=cfg.DATASETS.MULTI_DATASET.ADAPTIVE.HOLDOUT_BATCH,
    )


def build_evaluator_factory(cfg: DictConfig, data: RunData) -> Callable[[], SceneGraphEvaluator]:
    """Makes the empty evaluator of a run: ``TEST.PROTOCOL``, the zero-shot triplets if any."""
    return functools.partial(
        SceneGraphEvaluator,
        len(data.predicates),
        protocol=cfg.TEST.PROTOCOL.value,
        zero_shot_triplets=data.zero_shot,
    )


def best_metric_key(cfg: DictConfig, data: RunData) -> str | None:
    """``source/metric`` that selects ``best.pt``: ``TEST.BEST_METRIC`` on ``TEST.BEST_SOURCE``,
    by default the first real validation source (else the first one); None without validation.

    Raises:
        ConfigError: ``TEST.BEST_SOURCE`` names a source without a validation set.
    """
    if not data.val:
        return None
    source = cfg.TEST.BEST_SOURCE
    if source and source not in data.val:
        raise ConfigError(
            f"TEST.BEST_SOURCE={source!r} has no validation set; choose one of {sorted(data.val)}"
        )
    if not source:
        real = [name for name in data.val if data.kinds.get(name) == "real"]
        source = real[0] if real else next(iter(data.val))
    return f"{source}/{cfg.TEST.BEST_METRIC}"
