"""Typed run configuration: dataclass schema, YAML files, ``KEY=VALUE`` overrides, validation.

The schema keeps the keys of the original design note (``DATASETS.MULTI_DATASET.*``) and
detectron2's solver names (``SOLVER.BASE_LR``, ``SOLVER.MAX_ITER``, ...), so existing YAML files
work unchanged.

Sources: ``DATASETS.SOURCES`` lists any number of sources. ``DATASETS.MULTI_DATASET`` supplies the
defaults for every source that leaves ``RATIO`` or ``LOSS_WEIGHT`` unset: real sources share
``REAL_SAMPLING_RATIO`` equally, synthetic sources share the rest, and the loss weight follows the
source's ``TYPE``. A value written on a source always wins over ``MULTI_DATASET``. With ``SOURCES``
empty the run uses the embedded procedural demo data (``DATASETS.DEMO``).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError


class ConfigError(ValueError):
    """A configuration value a user can fix; the message names the key and where it came from."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


def _origin_of(key: str, config_file: str | Path | None, overrides: list[str]) -> str:
    """Where a bad value came from: the command line if an override set it, else the file."""
    base = key.split("[")[0]
    if any(base.startswith(item.split("=", 1)[0]) for item in overrides):
        return "command line"
    return str(config_file) if config_file is not None else "defaults"


@dataclass
class MultiDatasetConfig:
    ENABLED: bool = True
    REAL_SAMPLING_RATIO: float = 0.7
    REAL_LOSS_WEIGHT: float = 1.0
    SYNTHETIC_LOSS_WEIGHT: float = 0.5
    # Naive concatenation baseline: every source's share is its size / total size.
    RATIO_BY_SIZE: bool = False


@dataclass
class SourceConfig:
    NAME: str = "???"
    TYPE: str = "real"  # real | synthetic
    FORMAT: str = "relcoco"  # relcoco | vg150
    # relcoco: the train annotation JSON; vg150: the folder with the h5, dicts and image_data files.
    PATH: str = "???"
    # relcoco: the validation annotation JSON ("" = none); vg150: ignored, VAL_SPLIT is used.
    VAL_PATH: str = ""
    VAL_SPLIT: str = "val"
    NUM_VAL_IMAGES: int = 5000  # vg150: val = the first N images of the filtered train pool
    # relcoco: defaults to images/ beside each JSON; vg150: defaults to PATH/VG_100K.
    IMAGE_ROOT: str = ""
    RATIO: float | None = None
    LOSS_WEIGHT: float | None = None
    # Predicate names swapped by a horizontal flip, e.g. {"left of": "right of"}.
    PREDICATE_FLIP_MAP: dict[str, str] = field(default_factory=dict)


@dataclass
class DemoConfig:
    ROOT: str = ""  # "" = $XDG_CACHE_HOME/realsynth/demo (or ~/.cache/...)
    SEED: int = 0
    REAL_TRAIN: int = 300
    REAL_VAL: int = 100
    SYNTHETIC_TRAIN: int = 3000
    SYNTHETIC_VAL: int = 100
    LABEL_NOISE: float = 0.1


@dataclass
class DatasetsConfig:
    MULTI_DATASET: MultiDatasetConfig = field(default_factory=MultiDatasetConfig)
    SOURCES: list[SourceConfig] = field(default_factory=list)
    DEMO: DemoConfig = field(default_factory=DemoConfig)


@dataclass
class CriterionConfig:
    CE_SCOPE: str = "all"  # all | matched
    NORMALIZATION: str = "count"  # count | weight
    ON_INVALID_WEIGHT: str = "error"  # error | fallback
    EMPTY_WEIGHT: float = 0.1
    EMPTY_REL_WEIGHT: float = 0.1
    CLASS_WEIGHT: float = 1.0
    L1_WEIGHT: float = 5.0
    GIOU_WEIGHT: float = 2.0
    COST_CLASS: float = 1.0
    COST_BBOX: float = 5.0
    COST_GIOU: float = 2.0


@dataclass
class ModelConfig:
    PRESET: str = "tiny"  # tiny | base
    DEVICE: str = "auto"  # auto | cpu | cuda | cuda:N
    NUM_QUERIES: int | None = None
    D_MODEL: int | None = None
    ENC_LAYERS: int | None = None
    DEC_LAYERS: int | None = None
    DIM_FEEDFORWARD: int | None = None
    # Stage widths of the default CNN backbone; empty = the preset's.
    BACKBONE_CHANNELS: list[int] = field(default_factory=list)
    # batch | group | "" (the preset's: batch). group makes every image independent of its
    # batch (exact DDP equivalence on CPUs); batch learns much faster from scratch.
    BACKBONE_NORM: str = ""
    CRITERION: CriterionConfig = field(default_factory=CriterionConfig)


@dataclass
class SolverConfig:
    BASE_LR: float = 1e-3
    WEIGHT_DECAY: float = 1e-4
    BACKBONE_LR_MULTIPLIER: float = 1.0
    MAX_ITER: int = 2000
    IMS_PER_BATCH: int = 16
    WARMUP_ITERS: int = 100
    LR_SCHEDULE: str = "cosine"  # cosine | constant
    CLIP_GRAD_NORM: float = 0.1
    CHECKPOINT_PERIOD: int = 500
    AMP: bool = True  # bf16 autocast, on CUDA only


@dataclass
class TestConfig:
    EVAL_PERIOD: int = 500
    TOP_K: int = 100
    IMS_PER_BATCH: int = 32


@dataclass
class InputConfig:
    # Empty = keep the images at their native size (the demo data is already small).
    MIN_SIZE_TRAIN: list[int] = field(default_factory=list)
    MAX_SIZE_TRAIN: int = 1333
    MIN_SIZE_TEST: int = 0
    MAX_SIZE_TEST: int = 1333
    FLIP_PROB: float = 0.5
    NORMALIZE: bool = True


@dataclass
class DataLoaderConfig:
    NUM_WORKERS: int = 0
    SKIP_BAD_SAMPLES: bool = False
    REPLACEMENT: bool = False


@dataclass
class RunConfig:
    SEED: int = 0
    OUTPUT_DIR: str = "runs/default"
    DATASETS: DatasetsConfig = field(default_factory=DatasetsConfig)
    MODEL: ModelConfig = field(default_factory=ModelConfig)
    SOLVER: SolverConfig = field(default_factory=SolverConfig)
    TEST: TestConfig = field(default_factory=TestConfig)
    INPUT: InputConfig = field(default_factory=InputConfig)
    DATALOADER: DataLoaderConfig = field(default_factory=DataLoaderConfig)


_CHOICES = {
    "MODEL.PRESET": ("tiny", "base"),
    "MODEL.BACKBONE_NORM": ("", "batch", "group"),
    "MODEL.CRITERION.CE_SCOPE": ("all", "matched"),
    "MODEL.CRITERION.NORMALIZATION": ("count", "weight"),
    "MODEL.CRITERION.ON_INVALID_WEIGHT": ("error", "fallback"),
    "SOLVER.LR_SCHEDULE": ("cosine", "constant"),
}


def load_config(
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    base_yaml: str | None = None,
) -> DictConfig:
    """Resolve the run configuration: schema defaults <- YAML file <- ``KEY=VALUE`` overrides.

    Args:
        config_file: optional YAML file.
        overrides: ``KEY=VALUE`` strings (dotted keys, YAML values).
        base_yaml: YAML text merged before the file, e.g. the config saved in a checkpoint.

    Returns:
        A read-only, validated ``DictConfig`` with the ``RunConfig`` schema.

    Raises:
        ConfigError: unknown key (with a suggestion), wrong type or an invalid value; the message
            names the key and the file or "command line".
    """
    cfg = OmegaConf.structured(RunConfig)
    if base_yaml is not None:
        cfg = _merge(cfg, OmegaConf.create(base_yaml), origin="saved config")
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml parse errors come in several types
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        cfg = _merge(cfg, loaded, origin=str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override {item!r} is not KEY=VALUE")
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), origin="command line")
    try:
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{_origin_of(exc.key, config_file, overrides)}: {exc}") from None
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _merge(cfg: DictConfig, other: Any, *, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, other)
    except ConfigKeyError as exc:
        key = _full_key(exc)
        if "." not in key:  # OmegaConf names a key inside a list item without its path
            key = _path_of(OmegaConf.to_container(other), key) or key
        raise ConfigError(f"{origin}: unknown key {key}{_suggestion(key)}") from None
    except ValidationError as exc:
        raise ConfigError(f"{origin}: key {_full_key(exc)}: {exc.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{origin}: {str(exc).splitlines()[0]}") from None


def _path_of(node: Any, key: str, prefix: str = "") -> str | None:
    """Dotted path (list items as ``[i]``) of the first ``key`` found in a plain container."""
    items = node.items() if isinstance(node, dict) else enumerate(node or [])
    for name, value in items:
        path = f"{prefix}[{name}]" if isinstance(node, list) else f"{prefix}.{name}".lstrip(".")
        if name == key and not isinstance(node, list):
            return path
        if isinstance(value, dict | list) and (found := _path_of(value, key, path)):
            return found
    return None


def _full_key(exc: OmegaConfBaseException) -> str:
    return str(getattr(exc, "full_key", None) or getattr(exc, "key", "?"))


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items() if isinstance(node, dict) else []:
        full = f"{prefix}{key}"
        keys.append(full)
        keys.extend(_all_keys(value, f"{full}."))
    return keys


def _suggestion(key: str) -> str:
    known = _all_keys(OmegaConf.to_container(OmegaConf.structured(RunConfig)))
    known += [f"DATASETS.SOURCES.{k}" for k in _all_keys(OmegaConf.to_container(_source_node()))]
    # Compare whole paths first so "SOLVER.BASE_LRR" suggests "SOLVER.BASE_LR"; list positions
    # ("SOURCES[1]") are dropped for the comparison and put back in the suggestion.
    normalized = re.sub(r"\[\d+\]", "", key)
    match = difflib.get_close_matches(normalized, known, n=1, cutoff=0.6)
    if match and "." in key:
        return f" (did you mean {key.rsplit('.', 1)[0]}.{match[0].rsplit('.', 1)[-1]}?)"
    match = match or difflib.get_close_matches(key, [k.split(".")[-1] for k in known], 1)
    return f" (did you mean {match[0]}?)" if match else ""


def _source_node() -> DictConfig:
    return OmegaConf.structured(SourceConfig)


def validate(cfg: DictConfig) -> None:
    """Check values the schema's types cannot express. Raises ConfigError naming the key."""
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {choices}, got {value!r}", key)
    md = cfg.DATASETS.MULTI_DATASET
    _check_ratio(md.REAL_SAMPLING_RATIO, "DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO")
    for name in ("REAL_LOSS_WEIGHT", "SYNTHETIC_LOSS_WEIGHT"):
        _check_weight(md[name], f"DATASETS.MULTI_DATASET.{name}")
    _check_positive(cfg.SOLVER.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH")
    _check_positive(cfg.SOLVER.MAX_ITER, "SOLVER.MAX_ITER")
    _check_positive(cfg.SOLVER.CHECKPOINT_PERIOD, "SOLVER.CHECKPOINT_PERIOD")
    _check_positive(cfg.TEST.EVAL_PERIOD, "TEST.EVAL_PERIOD")
    _check_positive(cfg.TEST.IMS_PER_BATCH, "TEST.IMS_PER_BATCH")
    if cfg.TEST.TOP_K < 100:
        raise ConfigError(
            f"TEST.TOP_K must be >= 100 (Recall@100 needs 100 triplets), got {cfg.TEST.TOP_K}",
            "TEST.TOP_K",
        )
    if cfg.SOLVER.BASE_LR <= 0 or cfg.SOLVER.WEIGHT_DECAY < 0:
        raise ConfigError("SOLVER.BASE_LR must be > 0 and SOLVER.WEIGHT_DECAY >= 0", "SOLVER")
    for key in ("SEED", "DATALOADER.NUM_WORKERS", "SOLVER.WARMUP_ITERS"):
        if OmegaConf.select(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {OmegaConf.select(cfg, key)}", key)
    for key in ("NUM_QUERIES", "D_MODEL", "ENC_LAYERS", "DEC_LAYERS", "DIM_FEEDFORWARD"):
        if cfg.MODEL[key] is not None:
            _check_positive(cfg.MODEL[key], f"MODEL.{key}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.MODEL.DEVICE):
        raise ConfigError(
            f"MODEL.DEVICE must be auto, cpu, cuda or cuda:N, got {cfg.MODEL.DEVICE!r}",
            "MODEL.DEVICE",
        )
    _check_ratio(cfg.INPUT.FLIP_PROB, "INPUT.FLIP_PROB")
    _check_ratio(cfg.DATASETS.DEMO.LABEL_NOISE, "DATASETS.DEMO.LABEL_NOISE")
    _validate_sources(cfg)


def _validate_sources(cfg: DictConfig) -> None:
    seen: set[str] = set()
    for i, src in enumerate(cfg.DATASETS.SOURCES):
        key = f"DATASETS.SOURCES[{i}]"
        for required in ("NAME", "PATH"):
            if OmegaConf.is_missing(src, required):
                raise ConfigError(f"{key}.{required} is required", key)
        if src.NAME in seen:
            raise ConfigError(f"{key}.NAME: duplicate source name {src.NAME!r}", key)
        seen.add(src.NAME)
        if src.TYPE not in ("real", "synthetic"):
            raise ConfigError(f"{key}.TYPE must be 'real' or 'synthetic', got {src.TYPE!r}", key)
        if src.FORMAT not in ("relcoco", "vg150"):
            raise ConfigError(f"{key}.FORMAT must be 'relcoco' or 'vg150', got {src.FORMAT!r}", key)
        if src.FORMAT == "vg150" and src.VAL_SPLIT not in ("val", "test"):
            raise ConfigError(
                f"{key}.VAL_SPLIT must be 'val' or 'test', got {src.VAL_SPLIT!r}", key
            )
        if src.RATIO is not None:
            _check_ratio(src.RATIO, f"{key}.RATIO")
        if src.LOSS_WEIGHT is not None:
            _check_weight(src.LOSS_WEIGHT, f"{key}.LOSS_WEIGHT")
    explicit = [s.RATIO for s in cfg.DATASETS.SOURCES if s.RATIO is not None]
    if len(explicit) == len(cfg.DATASETS.SOURCES) and explicit and abs(sum(explicit) - 1) > 1e-6:
        raise ConfigError(
            f"DATASETS.SOURCES[*].RATIO must sum to 1, got {sum(explicit):.6g} "
            f"({', '.join(f'{s.NAME}={s.RATIO}' for s in cfg.DATASETS.SOURCES)})",
            "DATASETS.SOURCES",
        )


def _check_ratio(value: float, key: str) -> None:
    if not (0.0 <= value <= 1.0):
        raise ConfigError(f"{key} must be in [0, 1], got {value}", key)


def _check_weight(value: float, key: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key} must be a finite number >= 0, got {value}", key)


def _check_positive(value: int, key: str) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value}", key)


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML text (what ``config show`` prints and a run folder keeps)."""
    return OmegaConf.to_yaml(cfg)
