"""The ``MODEL`` section of the config: the architecture, its backbone, initial weights, the
criterion and SpeaQ's settings (the rest of the schema is in :mod:`realsynth.config.schema`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from realsynth.config.choices import (
    BackboneNorm,
    CeScope,
    Normalization,
    One2ManyDynamicScheme,
    One2ManyScheme,
    OnInvalidWeight,
    PredicateClassWeights,
    Preset,
)
from realsynth.modeling import heads


@dataclass
class CriterionConfig:
    CE_SCOPE: CeScope = CeScope.all  # all | matched
    NORMALIZATION: Normalization = Normalization.count  # count | weight
    ON_INVALID_WEIGHT: OnInvalidWeight = OnInvalidWeight.error  # error | fallback
    # Predicate CE class weights: none (all 1) or frequency (SpeaQ's formula with OVERSAMPLE_PARAM
    # alpha and UNDERSAMPLE_PARAM beta) from the predicate counts of PREDICATE_FREQUENCY_SOURCE:
    # real (the real training sources), all, or one source's NAME.
    PREDICATE_CLASS_WEIGHTS: PredicateClassWeights = PredicateClassWeights.none
    PREDICATE_FREQUENCY_SOURCE: str = "real"
    OVERSAMPLE_PARAM: float = 0.07
    UNDERSAMPLE_PARAM: float = 1.0
    NO_OBJECT_CLASS_WEIGHT: float = 0.1
    NO_RELATION_CLASS_WEIGHT: float = 0.1
    # Loss coefficients (every term of every layer) and Hungarian matching costs: DETR's.
    CLASS_COEFFICIENT: float = heads.CLASS_COEFFICIENT
    L1_COEFFICIENT: float = heads.BBOX_COEFFICIENT
    GIOU_COEFFICIENT: float = heads.GIOU_COEFFICIENT
    COST_CLASS: float = heads.CLASS_COEFFICIENT
    COST_BBOX: float = heads.BBOX_COEFFICIENT
    COST_GIOU: float = heads.GIOU_COEFFICIENT


@dataclass
class SpeaQConfig:
    """SpeaQ's matching (CVPR 2024; mlvlab/SpeaQ ``configs/defaults.py``), under its key names;
    docs/speaq.md maps them. Defaults are SpeaQ's, except ONE2MANY_SCHEME (none = one-to-one, what
    SpeaQ's static with K 1 does) and MATCH_INDEPENDENT (true: realsynth matches every decoder
    layer on its own predictions, as SpeaQ's recipe does)."""

    # none | static (K copies each) | dynamic (quality-aware)
    ONE2MANY_SCHEME: One2ManyScheme = One2ManyScheme.none
    # IoU combination: min | max | gm | am
    ONE2MANY_DYNAMIC_SCHEME: One2ManyDynamicScheme = One2ManyDynamicScheme.min
    ONE2MANY_K: int = 1
    MATCH_INDEPENDENT: bool = True  # false: one matching from the costs summed over layers
    ONE2MANY_PREDICATE_SCORE: bool = False  # add the predicate probability term to the quality
    ONE2MANY_PREDICATE_WEIGHT: float = 1.0
    MULTIPLY_QUERY: int = 1  # relation queries = NUM_QUERIES (or the preset's) x this
    ONLY_PREDICATE_MULTIPLY: bool = False  # not supported (docs/speaq.md)
    USE_GROUP_MASK: bool = False
    NUM_GROUPS: int = 5


@dataclass
class HfDetrConfig:
    # MODEL.ARCHITECTURE=hf_detr: an HF DETR-family body (needs pip install 'realsynth[hf]').
    # A local checkpoint directory (DETR or Deformable DETR, read offline with from_pretrained);
    # empty = a randomly initialized body of KIND with the sizes below.
    PATH: str = ""
    KIND: str = "detr"  # detr | deformable_detr (when PATH is empty)
    D_MODEL: int = 32
    ENC_LAYERS: int = 1
    DEC_LAYERS: int = 2
    HEADS: int = 2
    FFN: int = 64
    # A small ResNet: blocks and channels per stage (same length).
    BACKBONE_DEPTHS: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    BACKBONE_WIDTHS: list[int] = field(default_factory=lambda: [8, 16, 32, 64])


@dataclass
class BackboneConfig:
    """The relation transformer's backbone (realsynth.modeling.backbones; docs/model.md)."""

    # small_cnn | hf:<dir or hub id> (transformers' AutoBackbone, the weights saved there) |
    # timm:<name> | torchvision:<name> | package.module:callable (returns a module with
    # num_channels).
    NAME: str = "small_cnn"
    # small_cnn: stage widths; empty = the preset's.
    CHANNELS: list[int] = field(default_factory=list)
    # small_cnn: batch | group | default (the preset's: batch; "" means default too). group makes
    # every image independent of its batch (exact DDP equivalence on CPUs); batch learns much
    # faster from scratch.
    NORM: BackboneNorm = BackboneNorm.default
    # pretrained (timm / torchvision's own weights), or a state dict file loaded into the
    # backbone (every tensor must match); "" = none (hf: always loads the weights of its dir).
    WEIGHTS: str = ""
    # detectron2's FREEZE_AT: 0 nothing frozen, 1 the stem, 2 the stem and the first stage, ...
    FREEZE_AT: int = 0
    # BatchNorm with fixed statistics and affine parameters; unset = for a pretrained backbone
    # (WEIGHTS set, or hf:; for hf_detr: a body from MODEL.HF_DETR.PATH).
    FROZEN_BN: bool | None = None


@dataclass
class ModelConfig:
    # relation_transformer (realsynth's), hf_detr (MODEL.HF_DETR), or a factory by import path
    # "package.module:callable" called as
    # factory(num_classes=C, num_predicates=R, num_queries=Q, **ARCHITECTURE_KWARGS).
    ARCHITECTURE: str = "relation_transformer"
    ARCHITECTURE_KWARGS: dict[str, Any] = field(default_factory=dict)
    # Initial weights: a run folder or checkpoint, a state dict (.pt, .safetensors) or a
    # checkpoint directory; tensors matched by name, then by dotted suffix; other shapes stay
    # freshly initialized and are listed (weights.md in the run folder). Not read on --resume.
    WEIGHTS: str = ""
    WEIGHTS_STRICT: bool = False  # anything but a full match is an error
    PRESET: Preset = Preset.tiny  # tiny | base
    DEVICE: str = "auto"  # auto | cpu | cuda | cuda:N
    NUM_QUERIES: int | None = None
    D_MODEL: int | None = None
    ENC_LAYERS: int | None = None
    DEC_LAYERS: int | None = None
    DIM_FEEDFORWARD: int | None = None
    BACKBONE: BackboneConfig = field(default_factory=BackboneConfig)
    CRITERION: CriterionConfig = field(default_factory=CriterionConfig)
    SPEAQ: SpeaQConfig = field(default_factory=SpeaQConfig)
    HF_DETR: HfDetrConfig = field(default_factory=HfDetrConfig)
