"""Checks of the ``MODEL`` section the schema's types cannot express: the architecture, an HF
DETR-family body, SpeaQ's settings."""

from __future__ import annotations

import math
import re

from omegaconf import DictConfig

from realsynth.config.choices import One2ManyScheme
from realsynth.config.schema import ConfigError
from realsynth.config.value_checks import check_positive


def validate_architecture(cfg: DictConfig) -> None:
    """realsynth's relation transformer, an HF DETR-family body (``hf_detr``, sized by
    ``MODEL.HF_DETR``), or an import path to the user's factory."""
    name = cfg.MODEL.ARCHITECTURE
    builtin = ("relation_transformer", "hf_detr")
    if name not in builtin and not re.fullmatch(r"[\w.]+:[\w.]+", name):
        raise ConfigError(
            f"MODEL.ARCHITECTURE={name!r} must be relation_transformer or an import path "
            "package.module:callable to your model's factory (or hf_detr, an HF DETR-family "
            "body)",
            "MODEL.ARCHITECTURE",
        )
    if cfg.MODEL.ARCHITECTURE_KWARGS and name in builtin:
        takes = (
            "MODEL.D_MODEL, MODEL.ENC_LAYERS, ..."
            if name == "relation_transformer"
            else "MODEL.HF_DETR.*"
        )
        raise ConfigError(
            f"MODEL.ARCHITECTURE_KWARGS is for a factory given by import path; {name} takes "
            f"{takes}",
            "MODEL.ARCHITECTURE_KWARGS",
        )
    if name == "hf_detr":
        _validate_hf_detr(cfg)


def _validate_hf_detr(cfg: DictConfig) -> None:
    hf = cfg.MODEL.HF_DETR
    if hf.PATH:
        return  # the checkpoint's own config sizes the body; the builder reads it
    if hf.KIND not in ("detr", "deformable_detr"):
        raise ConfigError(
            f"MODEL.HF_DETR.KIND={hf.KIND!r} must be detr or deformable_detr",
            "MODEL.HF_DETR.KIND",
        )
    for key in ("D_MODEL", "ENC_LAYERS", "DEC_LAYERS", "HEADS", "FFN"):
        check_positive(hf[key], f"MODEL.HF_DETR.{key}")
    if hf.D_MODEL % hf.HEADS:
        raise ConfigError(
            f"MODEL.HF_DETR.D_MODEL={hf.D_MODEL} must be a multiple of "
            f"MODEL.HF_DETR.HEADS={hf.HEADS}",
            "MODEL.HF_DETR.HEADS",
        )
    depths, widths = list(hf.BACKBONE_DEPTHS), list(hf.BACKBONE_WIDTHS)
    if not depths or len(depths) != len(widths) or min(depths + widths) < 1:
        raise ConfigError(
            f"MODEL.HF_DETR.BACKBONE_DEPTHS={depths} and BACKBONE_WIDTHS={widths} must be "
            "non-empty lists of positive ints of the same length",
            "MODEL.HF_DETR.BACKBONE_DEPTHS",
        )


def validate_speaq(cfg: DictConfig) -> None:
    speaq = cfg.MODEL.SPEAQ
    for name in ("ONE2MANY_K", "MULTIPLY_QUERY", "NUM_GROUPS"):
        check_positive(speaq[name], f"MODEL.SPEAQ.{name}")
    if not math.isfinite(speaq.ONE2MANY_PREDICATE_WEIGHT):
        raise ConfigError(
            "MODEL.SPEAQ.ONE2MANY_PREDICATE_WEIGHT must be finite, got "
            f"{speaq.ONE2MANY_PREDICATE_WEIGHT}",
            "MODEL.SPEAQ.ONE2MANY_PREDICATE_WEIGHT",
        )
    if speaq.ONLY_PREDICATE_MULTIPLY:
        raise ConfigError(
            "MODEL.SPEAQ.ONLY_PREDICATE_MULTIPLY is not supported: realsynth's relation queries "
            "predict their own subject and object (no separate entity queries to share); "
            "MULTIPLY_QUERY multiplies the whole triplet queries (docs/speaq.md)",
            "MODEL.SPEAQ.ONLY_PREDICATE_MULTIPLY",
        )
    if speaq.ONE2MANY_SCHEME is One2ManyScheme.dynamic and not speaq.MATCH_INDEPENDENT:
        raise ConfigError(
            "MODEL.SPEAQ.ONE2MANY_SCHEME=dynamic needs MATCH_INDEPENDENT=true (the quality is "
            "measured on each layer's own predictions; SpeaQ has no shared dynamic matching)",
            ("MODEL.SPEAQ.ONE2MANY_SCHEME", "MODEL.SPEAQ.MATCH_INDEPENDENT"),
        )
