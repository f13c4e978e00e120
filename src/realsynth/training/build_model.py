"""Config -> the model, its matcher and its weighted criterion; the model's initial weights.

``MODEL.ARCHITECTURE`` picks realsynth's relation transformer, an HF DETR-family body with
realsynth's heads (``hf_detr``) or a user's factory reached by an import path
(``package.module:callable``); ``MODEL.WEIGHTS`` initializes the model from any checkpoint, with
a report of what loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from realsynth.config import ConfigError
from realsynth.config.choices import BackboneNorm, One2ManyScheme, PredicateClassWeights
from realsynth.data.batch_transport import batch_images
from realsynth.data.collate import collate_relations
from realsynth.data.stats import combine_statistics, compute_statistics, frequency_class_weights
from realsynth.modeling import backbones
from realsynth.modeling.backbones import SMALL_CNN
from realsynth.modeling.criterion import RelationCriterion
from realsynth.modeling.heads import loss_coefficients
from realsynth.modeling.matcher import HungarianMatcher
from realsynth.modeling.model import PRESETS, build_model
from realsynth.modeling.one_to_many import QualityAwareMatcher
from realsynth.modeling.output_contract import check_outputs
from realsynth.modeling.predicate_groups import GroupingError, predicate_groups
from realsynth.modeling.weights import WeightsMatch, format_weights_report, load_weights
from realsynth.training import data_setup
from realsynth.training.data_setup import RunData
from realsynth.utils.atomic import atomic_write_json, atomic_write_text
from realsynth.utils.import_path import load_callable

#: ``MODEL.ARCHITECTURE`` of realsynth's own relation transformer.
RELATION_TRANSFORMER = "relation_transformer"
#: ``MODEL.ARCHITECTURE`` of an HF DETR-family body with realsynth's heads (``MODEL.HF_DETR``).
HF_DETR = "hf_detr"
#: What a run folder keeps of ``MODEL.WEIGHTS``: the report table and every tensor's fate.
WEIGHTS_REPORT, WEIGHTS_JSON = "weights.md", "weights.json"


def build_model_and_criterion(
    cfg: DictConfig, data: RunData, device: torch.device
) -> tuple[nn.Module, RelationCriterion]:
    """The model of ``MODEL.ARCHITECTURE`` (freshly initialized) and its weighted set
    criterion."""
    num_queries = relation_queries(cfg)
    if cfg.MODEL.ARCHITECTURE == RELATION_TRANSFORMER:
        model = _relation_transformer(cfg, data, num_queries)
    elif cfg.MODEL.ARCHITECTURE == HF_DETR:
        model = _hf_detr(cfg, data, num_queries)
    else:
        model = _user_model(cfg, data, num_queries)
    crit = cfg.MODEL.CRITERION
    criterion = RelationCriterion(
        len(data.classes),
        len(data.predicates),
        predicate_class_weights=predicate_class_weights(cfg, data),
        matcher=build_matcher(cfg, data, num_queries),
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


def relation_queries(cfg: DictConfig) -> int:
    """Relation queries: ``MODEL.NUM_QUERIES`` (or the preset's) x ``SPEAQ.MULTIPLY_QUERY``."""
    queries = cfg.MODEL.NUM_QUERIES or PRESETS[cfg.MODEL.PRESET.value]["num_queries"]
    return queries * cfg.MODEL.SPEAQ.MULTIPLY_QUERY


def _relation_transformer(cfg: DictConfig, data: RunData, num_queries: int) -> nn.Module:
    """realsynth's relation transformer: ``MODEL.PRESET`` with the sizes the config sets."""
    overrides = {
        key.lower(): cfg.MODEL[key]
        for key in ("D_MODEL", "ENC_LAYERS", "DEC_LAYERS", "DIM_FEEDFORWARD")
        if cfg.MODEL[key] is not None
    }
    bb = cfg.MODEL.BACKBONE
    preset = cfg.MODEL.PRESET.value
    if bb.NAME == SMALL_CNN:
        # The preset's own construction (the default run's random stream stays as it was).
        if bb.CHANNELS:
            overrides["backbone_channels"] = tuple(bb.CHANNELS)
        if bb.NORM is not BackboneNorm.default:
            overrides["backbone_norm"] = bb.NORM.value
    else:
        overrides["backbone"] = _backbone("NAME", bb.NAME, backbones.build_backbone, bb.NAME)
    model = build_model(
        preset, len(data.classes), len(data.predicates), num_queries=num_queries, **overrides
    )
    backbone = model.backbone
    if bb.WEIGHTS and bb.WEIGHTS != backbones.PRETRAINED:
        _backbone("WEIGHTS", bb.WEIGHTS, backbones.load_backbone_weights, backbone, bb.WEIGHTS)
    frozen_bn = bb.FROZEN_BN
    if frozen_bn is None:  # frozen when pretrained
        frozen_bn = bool(bb.WEIGHTS) or bb.NAME.startswith("hf:")
    if frozen_bn:
        backbones.freeze_batch_norm(backbone)
    if bb.FREEZE_AT:
        _backbone("FREEZE_AT", bb.FREEZE_AT, backbones.freeze_stages, backbone, bb.FREEZE_AT)
    return model


def _backbone(key: str, value: Any, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``, its ``ValueError`` re-raised as a ConfigError naming
    ``MODEL.BACKBONE.<key>``."""
    try:
        return function(*args)
    except ValueError as exc:
        raise ConfigError(f"MODEL.BACKBONE.{key}={value}: {exc}", f"MODEL.BACKBONE.{key}") from None


def pixel_stats(cfg: DictConfig) -> tuple[list[float], list[float]]:
    """``INPUT.PIXEL_MEAN`` / ``PIXEL_STD``, or when they are empty the backbone's (see
    :func:`realsynth.modeling.backbones.backbone_pixel_stats`), else ImageNet's."""
    return data_setup.pixel_stats(cfg)


def fill_pixel_stats(cfg: DictConfig) -> None:
    """Write the backbone's mean and std into an empty ``INPUT.PIXEL_MEAN`` / ``PIXEL_STD`` (in
    place), so that the run's config.yaml records them for eval, data filter and gap; the
    default small_cnn, a fresh hf_detr body and a user's model keep them empty (the transforms'
    ImageNet default)."""
    if cfg.INPUT.PIXEL_MEAN and cfg.INPUT.PIXEL_STD:
        return
    pretrained_detr = cfg.MODEL.ARCHITECTURE == "hf_detr" and bool(cfg.MODEL.HF_DETR.PATH)
    own_backbone = cfg.MODEL.ARCHITECTURE == RELATION_TRANSFORMER
    if not pretrained_detr and not (own_backbone and cfg.MODEL.BACKBONE.NAME != SMALL_CNN):
        return
    mean, std = pixel_stats(cfg)
    readonly = OmegaConf.is_readonly(cfg)
    OmegaConf.set_readonly(cfg, False)
    cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD = list(mean), list(std)
    OmegaConf.set_readonly(cfg, readonly)


def _hf_detr(cfg: DictConfig, data: RunData, num_queries: int) -> nn.Module:
    """An HF DETR / Deformable DETR body (``MODEL.HF_DETR.PATH``, or a fresh one of ``KIND``
    sized by ``MODEL.HF_DETR``) with realsynth's triplet heads."""
    hf = cfg.MODEL.HF_DETR
    sizes = (len(data.classes), len(data.predicates), num_queries)
    frozen_bn = cfg.MODEL.BACKBONE.FROZEN_BN
    backbone = {
        "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
        # A pretrained body keeps HF's frozen BatchNorm; a fresh one learns its own.
        "frozen_bn": bool(hf.PATH) if frozen_bn is None else frozen_bn,
    }
    try:
        from realsynth.modeling.hf_detr import HfDetrRelationModel, tiny_config

        if hf.PATH:
            return HfDetrRelationModel(*sizes, path=hf.PATH, **backbone)
        config = tiny_config(
            hf.KIND,
            d_model=hf.D_MODEL,
            enc_layers=hf.ENC_LAYERS,
            dec_layers=hf.DEC_LAYERS,
            heads=hf.HEADS,
            ffn=hf.FFN,
            backbone_depths=tuple(hf.BACKBONE_DEPTHS),
            backbone_widths=tuple(hf.BACKBONE_WIDTHS),
            num_queries=num_queries,
        )
        return HfDetrRelationModel(*sizes, config=config, **backbone)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"MODEL.ARCHITECTURE=hf_detr needs HF transformers ({exc}); "
            "pip install 'realsynth[hf]'",
            "MODEL.ARCHITECTURE",
        ) from None
    except ValueError as exc:
        key = "MODEL.HF_DETR.PATH" if hf.PATH else "MODEL.HF_DETR"
        raise ConfigError(f"{key}: {exc}", key) from None


def _user_model(cfg: DictConfig, data: RunData, num_queries: int) -> nn.Module:
    """``factory(num_classes=C, num_predicates=R, num_queries=Q, **ARCHITECTURE_KWARGS)`` of the
    import path ``MODEL.ARCHITECTURE``; it must return an ``nn.Module`` (its outputs are checked
    on the first batch)."""
    path = cfg.MODEL.ARCHITECTURE
    try:
        factory = load_callable(path)
    except ValueError as exc:
        raise ConfigError(f"MODEL.ARCHITECTURE: {exc}", "MODEL.ARCHITECTURE") from None
    kwargs = OmegaConf.to_container(cfg.MODEL.ARCHITECTURE_KWARGS, resolve=True)
    sizes = {
        "num_classes": len(data.classes),
        "num_predicates": len(data.predicates),
        "num_queries": num_queries,
    }
    try:
        model = factory(**sizes, **kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"MODEL.ARCHITECTURE={path}: the factory does not take {sorted(sizes)} and "
            f"MODEL.ARCHITECTURE_KWARGS {sorted(kwargs)} ({exc})",
            "MODEL.ARCHITECTURE_KWARGS",
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"MODEL.ARCHITECTURE={path} returned a {type(model).__name__}, not a torch.nn.Module",
            "MODEL.ARCHITECTURE",
        )
    return model


def check_model_outputs(
    cfg: DictConfig, data: RunData, model: nn.Module, device: torch.device
) -> None:
    """A user's model (``MODEL.ARCHITECTURE`` by import path) meets the output contract
    (``realsynth.modeling.output_contract``) on two real images, before any training: in eval
    mode, without gradients, drawing from no random stream of the run.

    Raises:
        ConfigError: the first missing key or wrong shape, named with both shapes.
    """
    if cfg.MODEL.ARCHITECTURE == RELATION_TRANSFORMER:
        return
    dataset = next(iter(data.val.values()), None)
    if dataset is not None:
        items = [dataset[i] for i in range(min(2, len(dataset)))]
    else:  # a generator of its own: the check must not shift the run's streams
        rng = np.random.default_rng(0)
        items = [data.train[0].get_item(i, rng) for i in range(min(2, len(data.train[0])))]
    batch = collate_relations(items)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        outputs = model(batch_images(batch, device), batch["pixel_mask"].to(device))
    model.train(was_training)
    try:
        check_outputs(
            outputs,
            batch=len(batch["targets"]),
            num_classes=len(data.classes),
            num_predicates=len(data.predicates),
            where=f"MODEL.ARCHITECTURE={cfg.MODEL.ARCHITECTURE}",
        )
    except ValueError as exc:
        raise ConfigError(str(exc), "MODEL.ARCHITECTURE") from None


def load_initial_weights(cfg: DictConfig, model: nn.Module, run_dir: Path | None) -> None:
    """Initialize ``model`` from ``MODEL.WEIGHTS`` (nothing when it is empty): tensors matched
    by name, then by dotted suffix; tensors of another shape stay freshly initialized. The
    report is printed and, with ``run_dir``, saved there (``weights.md``, ``weights.json``).

    Raises:
        ConfigError: the file cannot be read, a match is ambiguous, or ``WEIGHTS_STRICT`` is set
            and the match is not complete.
    """
    path = cfg.MODEL.WEIGHTS
    if not path:
        return
    try:
        match: WeightsMatch = load_weights(model, path, strict=cfg.MODEL.WEIGHTS_STRICT)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"MODEL.WEIGHTS: {exc}", "MODEL.WEIGHTS") from None
    report = format_weights_report(match, path)
    print(report)
    if run_dir is not None:
        atomic_write_text(run_dir / WEIGHTS_REPORT, report + "\n")
        atomic_write_json(run_dir / WEIGHTS_JSON, {"weights": str(path), **match.to_dict()})
