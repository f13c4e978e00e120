"""The run configuration's schema: typed dataclasses with every key and its default.

The mixing keys live under ``DATASETS.MULTI_DATASET.*``, and the solver keeps detectron2's
names (``SOLVER.BASE_LR``, ``SOLVER.MAX_ITER``, ...), so existing YAML files
work unchanged. Loading and overrides are in :mod:`realsynth.config`, value checks in
:mod:`realsynth.config.checks`. A key with a fixed set of values is a ``Choice`` enum
(:mod:`realsynth.config.choices`), so OmegaConf refuses any other value while merging
(``load_config`` names the key and the values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from realsynth.config.choices import (
    AdaptiveMethod,
    AdaptiveScore,
    CompareSplit,
    EvalProtocol,
    LrSchedule,
    Pruner,
    Sampler,
)
from realsynth.config.model_schema import ModelConfig
from realsynth.data.demo_settings import DEMO_SIZES


class ConfigError(ValueError):
    """A configuration value a user can fix; the message names the key and where it came from.

    Args:
        message: one line naming the key(s) and what was expected.
        key: the full key of the bad value (``DATASETS.SOURCES[1].RATIO``), or several keys
            whose values do not go together; ``load_config`` names where they were set.
    """

    def __init__(self, message: str, key: str | tuple[str, ...] = "") -> None:
        super().__init__(message)
        keys = (key,) if isinstance(key, str) else tuple(key)
        self.keys: tuple[str, ...] = tuple(k for k in keys if k)
        self.key = self.keys[0] if self.keys else ""


@dataclass
class ScheduleConfig:
    """A share or a loss weight over optimizer steps (realsynth.mixing.step_schedule).

    KIND constant: the plain key beside this node decides (RATIO, REAL_SAMPLING_RATIO, ...).
    """

    KIND: str = "constant"  # constant | linear | cosine | steps | pretrain_finetune
    # linear / cosine: START_VALUE until START_STEP, then a line / half cosine to END_VALUE at
    # END_STEP. steps: START_VALUE before the first breakpoint. Unset START_VALUE: the plain
    # key's value; unset END_STEP: SOLVER.MAX_ITER.
    START_VALUE: float | None = None
    END_VALUE: float | None = None
    START_STEP: int = 0
    END_STEP: int | None = None
    # steps: [[step, value], ...], steps strictly increasing; each value holds from its step on.
    BREAKPOINTS: list[list[float]] = field(default_factory=list)
    # pretrain_finetune (REAL_SAMPLING_RATIO_SCHEDULE only): the real share is
    # PRETRAIN_REAL_RATIO for the first PRETRAIN_STEPS steps (unset: MAX_ITER / 2), then
    # FINETUNE_REAL_RATIO.
    PRETRAIN_STEPS: int | None = None
    PRETRAIN_REAL_RATIO: float = 0.0
    FINETUNE_REAL_RATIO: float = 1.0


@dataclass
class AdaptiveConfig:
    """Shares (and optionally synthetic weights) that follow a real holdout while training."""

    ENABLED: bool = False
    METHOD: AdaptiveMethod = (
        AdaptiveMethod.gradient_alignment
    )  # gradient_alignment (DoGE-style; docs/adaptive.md)
    # How a source's gradient is scored against the holdout's: cosine (shrinks with the
    # source's item count) or projection (noise-corrected; docs/adaptive.md).
    SCORE: AdaptiveScore = AdaptiveScore.cosine
    INTERVAL: int = 50  # steps between decisions; a decision rules the interval after the next
    # The holdout: HOLDOUT_IMAGES images carved from the first real source's training set, or
    # HOLDOUT_SOURCE, a source whose whole training file is the holdout (not trained on).
    HOLDOUT_IMAGES: int = 64
    HOLDOUT_SOURCE: str = ""
    HOLDOUT_BATCH: int = 16  # holdout images per decision (cycling through the holdout)
    STEP_SIZE: float = 1.0  # exponentiated-gradient step on the smoothed alignment
    SMOOTHING: float = 0.8  # alignment EMA: new = SMOOTHING * old + (1 - SMOOTHING) * measured
    MIN_RATIO: float = 0.05  # per-source share bounds (a source's own MIN_RATIO / MAX_RATIO win)
    MAX_RATIO: float = 0.95
    ADAPT_WEIGHTS: bool = False  # also move the synthetic sources' loss weights
    MIN_WEIGHT: float = 0.0
    MAX_WEIGHT: float = 1.0


@dataclass
class MultiDatasetConfig:
    ENABLED: bool = True
    REAL_SAMPLING_RATIO: float = 0.7
    REAL_LOSS_WEIGHT: float = 1.0
    SYNTHETIC_LOSS_WEIGHT: float = 0.5
    # Weight of the no-object / no-relation CE of unmatched queries in synthetic images
    # (Gen2Det ignores the background of synthetic images: 0.0); a source's own wins.
    SYNTHETIC_BACKGROUND_WEIGHT: float = 1.0
    # Naive concatenation baseline: every source's share is its size / total size.
    RATIO_BY_SIZE: bool = False
    # Shares and weights that change over training; see ScheduleConfig and docs/schedules.md.
    REAL_SAMPLING_RATIO_SCHEDULE: ScheduleConfig = field(default_factory=ScheduleConfig)
    SYNTHETIC_LOSS_WEIGHT_SCHEDULE: ScheduleConfig = field(default_factory=ScheduleConfig)
    ADAPTIVE: AdaptiveConfig = field(default_factory=AdaptiveConfig)


@dataclass
class SourceConfig:
    NAME: str = "???"
    TYPE: str = "real"  # real | synthetic
    FORMAT: str = "relcoco"  # relcoco | vg150 | shards
    # relcoco: the train annotation JSON; vg150: the folder with the h5, dicts and image_data files;
    # shards: the folder (or its index.json) written by `realsynth data convert`, a path or a URL.
    PATH: str = "???"
    # relcoco: the validation annotation JSON ("" = none); vg150: ignored, VAL_SPLIT is used.
    VAL_PATH: str = ""
    # relcoco: the test annotation JSON ("" = none), only for reports that model selection never
    # sees (compare --split test, the sweep's confirmation); vg150: its test split (split 2)
    # when VAL_SPLIT is val.
    TEST_PATH: str = ""
    VAL_SPLIT: str = "val"
    NUM_VAL_IMAGES: int = 5000  # vg150: val = the first N images of the filtered train pool
    # vg150, training split only (SGB's filters): one random predicate per (subject, object)
    # pair; keep only relations whose boxes overlap (SGB's sgdet default in defaults.py; its
    # shipped sgdet config turns it off).
    FILTER_DUPLICATE_RELS: bool = True
    FILTER_NON_OVERLAP: bool = False
    # relcoco: defaults to images/ beside each JSON; vg150: defaults to PATH/VG_100K.
    IMAGE_ROOT: str = ""
    # relcoco: the validation / test JSON's images when they are not IMAGE_ROOT's (e.g. a
    # filtered training file written elsewhere with IMAGE_ROOT pointing at its images); vg150:
    # unused (IMAGE_ROOT serves its splits).
    VAL_IMAGE_ROOT: str = ""
    TEST_IMAGE_ROOT: str = ""
    RATIO: float | None = None
    LOSS_WEIGHT: float | None = None
    # Per-source schedules win over the MULTI_DATASET ones, as RATIO / LOSS_WEIGHT do.
    RATIO_SCHEDULE: ScheduleConfig = field(default_factory=ScheduleConfig)
    LOSS_WEIGHT_SCHEDULE: ScheduleConfig = field(default_factory=ScheduleConfig)
    # Adaptive mixing: this source's share bounds (unset: MULTI_DATASET.ADAPTIVE's).
    MIN_RATIO: float | None = None
    MAX_RATIO: float | None = None
    BACKGROUND_WEIGHT: float | None = None  # default: its kind's (MULTI_DATASET)
    # Predicate names swapped by a horizontal flip, e.g. {"left of": "right of"}.
    PREDICATE_FLIP_MAP: dict[str, str] = field(default_factory=dict)


@dataclass
class DemoConfig:
    ROOT: str = ""  # "" = $XDG_CACHE_HOME/realsynth/demo (or ~/.cache/...)
    SEED: int = 0
    REAL_TRAIN: int = DEMO_SIZES["real_train"]
    REAL_VAL: int = DEMO_SIZES["real_val"]
    SYNTHETIC_TRAIN: int = DEMO_SIZES["synthetic_train"]
    SYNTHETIC_VAL: int = DEMO_SIZES["synthetic_val"]
    REAL_TEST: int = DEMO_SIZES["real_test"]
    # The synthetic domain's damage: a named preset (mild: 10% wrong classes and predicates,
    # the flat rendering; noisy: many wrong, missing and misplaced labels; shifted: other label
    # frequencies and a strong appearance gap), and any of its knobs set here (unset: the
    # preset's). LABEL_NOISE sets CLASS_NOISE and PREDICATE_NOISE both.
    PRESET: str = "mild"  # mild | noisy | shifted
    LABEL_NOISE: float | None = None
    CLASS_NOISE: float | None = None
    PREDICATE_NOISE: float | None = None
    MISSING_OBJECTS: float | None = None
    MISSING_RELATIONS: float | None = None
    BOX_NOISE: float | None = None
    CLASS_SHIFT: float | None = None
    PREDICATE_SHIFT: float | None = None
    APPEARANCE_GAP: float | None = None  # 1: the flat rendering; 0: rendered like real images
    HUE_SHIFT: float | None = None  # degrees, [0, 360)


@dataclass
class DatasetsConfig:
    MULTI_DATASET: MultiDatasetConfig = field(default_factory=MultiDatasetConfig)
    SOURCES: list[SourceConfig] = field(default_factory=list)
    DEMO: DemoConfig = field(default_factory=DemoConfig)


@dataclass
class SolverConfig:
    BASE_LR: float = 1e-3
    WEIGHT_DECAY: float = 1e-4
    BACKBONE_LR_MULTIPLIER: float = 1.0
    MAX_ITER: int = 2000
    IMS_PER_BATCH: int = 16
    WARMUP_ITERS: int = 100
    LR_SCHEDULE: LrSchedule = LrSchedule.cosine  # cosine | constant | step
    # step: the rate is multiplied by GAMMA at each of STEPS (detectron2's WarmupMultiStepLR).
    STEPS: list[int] = field(default_factory=list)
    GAMMA: float = 0.1
    CLIP_GRAD_NORM: float = 0.1
    CHECKPOINT_PERIOD: int = 500
    KEEP_CHECKPOINTS: int = 2  # step checkpoints kept (the newest), besides best.pt
    # Steps whose losses are fetched from the device together (one sync per period); the log
    # still holds every step.
    LOG_PERIOD: int = 20
    AMP: bool = True  # bf16 autocast, on CUDA only


@dataclass
class TestConfig:
    EVAL_PERIOD: int = 500  # 0: no periodic evaluation (the final one still runs)
    TOP_K: int = 100
    IMS_PER_BATCH: int = 32
    # checkpoints/best.pt keeps the best BEST_METRIC on BEST_SOURCE ("" = the first real
    # validation source).
    BEST_METRIC: str = "R@50"
    BEST_SOURCE: str = ""
    # sgb: original-image pixels, SGB's +1 IoU, images without predictions left out (published
    # VG150 numbers); continuous: normalized boxes, continuous IoU, such images count as 0.
    PROTOCOL: EvalProtocol = EvalProtocol.sgb
    # SGB's zeroshot_triplet.pytorch or a JSON of [subject, predicate, object] names: zsR@K.
    ZERO_SHOT_TRIPLETS: str = ""
    GAP_REPORT: bool = False  # write the domain-gap report (`realsynth gap`) when a run ends


@dataclass
class InputConfig:
    # Empty = keep the images at their native size (the demo data is already small).
    MIN_SIZE_TRAIN: list[int] = field(default_factory=list)
    # The longest side of every image, native sizes included (detectron2/DETR's 1333): a larger
    # file is reduced while it is decoded, so memory stays bounded whatever its size.
    MAX_SIZE_TRAIN: int = 1333
    MIN_SIZE_TEST: int = 0
    MAX_SIZE_TEST: int = 1333
    FLIP_PROB: float = 0.5
    NORMALIZE: bool = True
    # The normalization's mean and std (RGB, images in [0, 1]); empty = the backbone's: its
    # preprocessor_config.json (hf:) or ImageNet's. A run records the values in its config.yaml.
    PIXEL_MEAN: list[float] = field(default_factory=list)
    PIXEL_STD: list[float] = field(default_factory=list)


@dataclass
class DataLoaderConfig:
    NUM_WORKERS: int = 0
    SKIP_BAD_SAMPLES: bool = False
    REPLACEMENT: bool = False
    # Sources in shards (FORMAT: shards): each pass visits this many shards at a time, its
    # items shuffled among them, so that a cache of that many remote shards keeps hitting.
    SHARD_WINDOW: int = 8
    # Where shards read from a URL are downloaded ("": $REALSYNTH_SHARD_CACHE or
    # ~/.cache/realsynth/shards). Local shards are read in place.
    SHARD_CACHE: str = ""


@dataclass
class CompareVariantConfig:
    NAME: str = "???"
    OVERRIDES: list[str] = field(default_factory=list)  # KEY=VALUE, as on the command line


@dataclass
class CompareConfig:
    SEEDS: int = 3  # runs per variant, seeds SEED .. SEED + SEEDS - 1
    BUILTIN: list[str] = field(default_factory=lambda: ["real_only", "naive", "mix"])
    VARIANTS: list[CompareVariantConfig] = field(default_factory=list)
    REFERENCE: str = "real_only"
    METRIC: str = "R@50"
    SPLIT: CompareSplit = CompareSplit.val  # val | test (each source's test split: reports only)
    BOOTSTRAP: int = 2000  # replicates of the paired bootstrap


@dataclass
class SweepParameterConfig:
    KEY: str = "???"
    TYPE: str = "float"  # float | log_float | int | categorical
    LOW: float | None = None
    HIGH: float | None = None
    CHOICES: list[Any] = field(default_factory=list)


def _default_space() -> list[SweepParameterConfig]:
    return [
        SweepParameterConfig("DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO", "float", 0.1, 1.0),
        SweepParameterConfig("DATASETS.MULTI_DATASET.SYNTHETIC_LOSS_WEIGHT", "float", 0.0, 1.0),
    ]


@dataclass
class SweepConfig:
    SPACE: list[SweepParameterConfig] = field(default_factory=_default_space)
    TRIALS: int = 12
    SAMPLER: Sampler = Sampler.tpe  # tpe | random | grid
    GRID_POINTS: int = 4  # per numeric dimension, for the grid sampler
    PRUNER: Pruner = Pruner.successive_halving  # successive_halving | median | none
    METRIC: str = "R@50"  # selection metric on SOURCE's validation set
    SOURCE: str = ""  # "" = the first real validation source
    # A database storage's heartbeat: a trial silent for 3x this long is failed and tried again.
    HEARTBEAT_SECONDS: float = 60.0
    CONFIRM_SEEDS: int = 3  # fresh seeds of the chosen mix, the config's mix and real only (test)


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
    COMPARE: CompareConfig = field(default_factory=CompareConfig)
    SWEEP: SweepConfig = field(default_factory=SweepConfig)


#: Keys of earlier versions and their names now (a YAML that uses one gets told the new name).
RENAMED_KEYS = {
    "MODEL.CRITERION.CLASS_WEIGHT": "MODEL.CRITERION.CLASS_COEFFICIENT",
    "MODEL.CRITERION.L1_WEIGHT": "MODEL.CRITERION.L1_COEFFICIENT",
    "MODEL.CRITERION.GIOU_WEIGHT": "MODEL.CRITERION.GIOU_COEFFICIENT",
    "MODEL.CRITERION.EMPTY_WEIGHT": "MODEL.CRITERION.NO_OBJECT_CLASS_WEIGHT",
    "MODEL.CRITERION.EMPTY_REL_WEIGHT": "MODEL.CRITERION.NO_RELATION_CLASS_WEIGHT",
    "MODEL.BACKBONE_CHANNELS": "MODEL.BACKBONE.CHANNELS",
    "MODEL.BACKBONE_NORM": "MODEL.BACKBONE.NORM",
}
