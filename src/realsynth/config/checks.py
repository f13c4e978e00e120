"""Checks of config values the schema's types cannot express; errors name the key."""

from __future__ import annotations

import math
import re

from omegaconf import DictConfig, OmegaConf

from realsynth.config.choices import LrSchedule
from realsynth.config.model_checks import validate_architecture, validate_speaq
from realsynth.config.schedules import REAL_RATIO_SCHEDULE, schedule_or_constant
from realsynth.config.schema import ConfigError
from realsynth.config.value_checks import check_metric, check_positive, check_ratio, check_weight
from realsynth.data.demo_settings import DEMO_DAMAGE_DEFAULTS, DEMO_PRESET_CHANGES

MD = "DATASETS.MULTI_DATASET"
ADAPTIVE = f"{MD}.ADAPTIVE"


def validate(cfg: DictConfig) -> None:
    """Check values the schema's types cannot express (a fixed set of values is a ``Choice``
    enum, refused while merging). Raises ConfigError naming the key."""
    _validate_multi_dataset(cfg)
    _validate_solver(cfg)
    _validate_test(cfg)
    _validate_optimizer(cfg)
    for key in ("SEED", "DATALOADER.NUM_WORKERS", "SOLVER.WARMUP_ITERS"):
        if OmegaConf.select(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {OmegaConf.select(cfg, key)}", key)
    if cfg.DATALOADER.SHARD_WINDOW < 1:
        raise ConfigError(
            f"DATALOADER.SHARD_WINDOW must be >= 1 (shards shuffled together), got "
            f"{cfg.DATALOADER.SHARD_WINDOW}",
            "DATALOADER.SHARD_WINDOW",
        )
    _validate_model(cfg)
    check_ratio(cfg.INPUT.FLIP_PROB, "INPUT.FLIP_PROB")
    _validate_studies(cfg)
    _validate_demo(cfg.DATASETS.DEMO)
    _validate_sources(cfg)
    _validate_schedules(cfg)
    _validate_adaptive(cfg)
    validate_speaq(cfg)
    _validate_gap_report(cfg)
    validate_architecture(cfg)


def _validate_multi_dataset(cfg: DictConfig) -> None:
    md = cfg.DATASETS.MULTI_DATASET
    check_ratio(md.REAL_SAMPLING_RATIO, "DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO")
    for name in ("REAL_LOSS_WEIGHT", "SYNTHETIC_LOSS_WEIGHT", "SYNTHETIC_BACKGROUND_WEIGHT"):
        check_weight(md[name], f"DATASETS.MULTI_DATASET.{name}")


def _validate_solver(cfg: DictConfig) -> None:
    """The solver's counts and periods (its rates: ``_validate_optimizer``)."""
    check_positive(cfg.SOLVER.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH")
    check_positive(cfg.SOLVER.MAX_ITER, "SOLVER.MAX_ITER")
    check_positive(cfg.SOLVER.CHECKPOINT_PERIOD, "SOLVER.CHECKPOINT_PERIOD")
    check_positive(cfg.SOLVER.KEEP_CHECKPOINTS, "SOLVER.KEEP_CHECKPOINTS")
    check_positive(cfg.SOLVER.LOG_PERIOD, "SOLVER.LOG_PERIOD")
    _validate_lr_steps(cfg)


def _validate_lr_steps(cfg: DictConfig) -> None:
    """``SOLVER.STEPS``: increasing steps within the run, given exactly for the step schedule."""
    solver = cfg.SOLVER
    steps = list(solver.STEPS)
    if (solver.LR_SCHEDULE is LrSchedule.step) != bool(steps):
        raise ConfigError(
            f"SOLVER.STEPS={steps} goes with SOLVER.LR_SCHEDULE=step (the steps where the rate "
            f"drops by GAMMA), and only with it; LR_SCHEDULE is {solver.LR_SCHEDULE.value}",
            "SOLVER.STEPS",
        )
    if steps != sorted(set(steps)) or (steps and not 0 < steps[0] <= steps[-1] <= solver.MAX_ITER):
        raise ConfigError(
            f"SOLVER.STEPS={steps} must increase strictly, within 1 .. SOLVER.MAX_ITER="
            f"{solver.MAX_ITER}",
            "SOLVER.STEPS",
        )
    if not 0 < solver.GAMMA <= 1:
        raise ConfigError(f"SOLVER.GAMMA must be in (0, 1], got {solver.GAMMA}", "SOLVER.GAMMA")


def _validate_test(cfg: DictConfig) -> None:
    if cfg.TEST.EVAL_PERIOD < 0:
        raise ConfigError(
            f"TEST.EVAL_PERIOD must be >= 0 (0 = final evaluation only), got "
            f"{cfg.TEST.EVAL_PERIOD}",
            "TEST.EVAL_PERIOD",
        )
    check_positive(cfg.TEST.IMS_PER_BATCH, "TEST.IMS_PER_BATCH")
    if cfg.TEST.TOP_K < 100:
        raise ConfigError(
            f"TEST.TOP_K must be >= 100 (Recall@100 needs 100 triplets), got {cfg.TEST.TOP_K}",
            "TEST.TOP_K",
        )


def _validate_optimizer(cfg: DictConfig) -> None:
    if not cfg.SOLVER.BASE_LR > 0:
        raise ConfigError(f"SOLVER.BASE_LR must be > 0, got {cfg.SOLVER.BASE_LR}", "SOLVER.BASE_LR")
    if not cfg.SOLVER.WEIGHT_DECAY >= 0:
        raise ConfigError(
            f"SOLVER.WEIGHT_DECAY must be >= 0, got {cfg.SOLVER.WEIGHT_DECAY}",
            "SOLVER.WEIGHT_DECAY",
        )


def _validate_model(cfg: DictConfig) -> None:
    for key in ("NUM_QUERIES", "D_MODEL", "ENC_LAYERS", "DEC_LAYERS", "DIM_FEEDFORWARD"):
        if cfg.MODEL[key] is not None:
            check_positive(cfg.MODEL[key], f"MODEL.{key}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.MODEL.DEVICE):
        raise ConfigError(
            f"MODEL.DEVICE must be auto, cpu, cuda or cuda:N, got {cfg.MODEL.DEVICE!r}",
            "MODEL.DEVICE",
        )
    crit = cfg.MODEL.CRITERION
    if not crit.OVERSAMPLE_PARAM > 0 or not crit.UNDERSAMPLE_PARAM >= 0:
        raise ConfigError(
            "MODEL.CRITERION.OVERSAMPLE_PARAM must be > 0 and UNDERSAMPLE_PARAM >= 0, got "
            f"{crit.OVERSAMPLE_PARAM} and {crit.UNDERSAMPLE_PARAM}",
            ("MODEL.CRITERION.OVERSAMPLE_PARAM", "MODEL.CRITERION.UNDERSAMPLE_PARAM"),
        )


def _validate_studies(cfg: DictConfig) -> None:
    """``compare`` and ``sweep``, and the metrics they (and ``TEST.BEST_METRIC``) select by."""
    for key in ("COMPARE.SEEDS", "COMPARE.BOOTSTRAP", "SWEEP.TRIALS", "SWEEP.GRID_POINTS"):
        check_positive(OmegaConf.select(cfg, key), key)
    if cfg.SWEEP.CONFIRM_SEEDS < 0:
        raise ConfigError(
            f"SWEEP.CONFIRM_SEEDS must be >= 0 (0: no confirmation), got {cfg.SWEEP.CONFIRM_SEEDS}",
            "SWEEP.CONFIRM_SEEDS",
        )
    for key in ("COMPARE.METRIC", "SWEEP.METRIC", "TEST.BEST_METRIC"):
        check_metric(OmegaConf.select(cfg, key), key)


def _validate_gap_report(cfg: DictConfig) -> None:
    """The domain-gap report compares a synthetic source with the real one: a run that trains
    on real data only has nothing to compare."""
    if not cfg.TEST.GAP_REPORT:
        return
    sources = cfg.DATASETS.SOURCES
    synthetic = any(s.TYPE == "synthetic" for s in sources) if sources else True
    if not cfg.DATASETS.MULTI_DATASET.ENABLED or not synthetic:
        raise ConfigError(
            "TEST.GAP_REPORT=true needs a synthetic source beside the real one, and this run "
            "trains on real data only; set TEST.GAP_REPORT=false",
            "TEST.GAP_REPORT",
        )


def _validate_adaptive(cfg: DictConfig) -> None:
    """Adaptive mixing's settings and share bounds (checked whether it is on or not), then, when
    it is on, its holdout and the schedules it cannot follow."""
    _validate_adaptive_settings(cfg)
    _validate_source_ratio_bounds(cfg)
    if not cfg.DATASETS.MULTI_DATASET.ADAPTIVE.ENABLED:
        return
    _validate_holdout_source(cfg)
    _validate_adaptive_schedules(cfg)


def _validate_adaptive_settings(cfg: DictConfig) -> None:
    adaptive = cfg.DATASETS.MULTI_DATASET.ADAPTIVE
    key = ADAPTIVE
    for name in ("INTERVAL", "HOLDOUT_IMAGES", "HOLDOUT_BATCH"):
        check_positive(adaptive[name], f"{key}.{name}")
    if not (math.isfinite(adaptive.STEP_SIZE) and adaptive.STEP_SIZE > 0):
        raise ConfigError(
            f"{key}.STEP_SIZE must be > 0, got {adaptive.STEP_SIZE}", f"{key}.STEP_SIZE"
        )
    if not 0 <= adaptive.SMOOTHING < 1:
        raise ConfigError(
            f"{key}.SMOOTHING must be in [0, 1), got {adaptive.SMOOTHING}", f"{key}.SMOOTHING"
        )
    for low, high, top in (("MIN_RATIO", "MAX_RATIO", 1.0), ("MIN_WEIGHT", "MAX_WEIGHT", None)):
        _check_bounds(adaptive[low], adaptive[high], f"{key}.{low} / {high}", key, key, top)


def _validate_source_ratio_bounds(cfg: DictConfig) -> None:
    adaptive = cfg.DATASETS.MULTI_DATASET.ADAPTIVE
    key = ADAPTIVE
    for i, src in enumerate(cfg.DATASETS.SOURCES):
        # A bound the source leaves unset is ADAPTIVE's.
        own = f"DATASETS.SOURCES[{i}]"
        low, low_at = (
            (src.MIN_RATIO, own) if src.MIN_RATIO is not None else (adaptive.MIN_RATIO, key)
        )
        high, high_at = (
            (src.MAX_RATIO, own) if src.MAX_RATIO is not None else (adaptive.MAX_RATIO, key)
        )
        _check_bounds(low, high, f"{own}.MIN_RATIO / MAX_RATIO", low_at, high_at, 1.0)


def _validate_holdout_source(cfg: DictConfig) -> None:
    adaptive = cfg.DATASETS.MULTI_DATASET.ADAPTIVE
    # With SOURCES empty the run's sources are the demo's: the builder checks the name.
    names = {s.NAME: s.TYPE for s in cfg.DATASETS.SOURCES}
    if adaptive.HOLDOUT_SOURCE and names and names.get(adaptive.HOLDOUT_SOURCE) != "real":
        raise ConfigError(
            holdout_source_error(adaptive.HOLDOUT_SOURCE, names),
            (f"{ADAPTIVE}.HOLDOUT_SOURCE", "DATASETS.SOURCES"),
        )


def _validate_adaptive_schedules(cfg: DictConfig) -> None:
    """Adaptive mixing decides the shares (and, with ADAPT_WEIGHTS, the weights): no schedule
    may move them too."""
    md, key = cfg.DATASETS.MULTI_DATASET, ADAPTIVE
    scheduled = [(REAL_RATIO_SCHEDULE, md.REAL_SAMPLING_RATIO_SCHEDULE.KIND)] + [
        (f"DATASETS.SOURCES[{i}].RATIO_SCHEDULE", s.RATIO_SCHEDULE.KIND)
        for i, s in enumerate(cfg.DATASETS.SOURCES)
    ]
    if changing := [f"{name}.KIND" for name, kind in scheduled if kind != "constant"]:
        raise ConfigError(
            f"{key}: adaptive mixing decides the shares itself; set every ratio schedule's "
            f"KIND to constant (the plain ratios are its starting point): {', '.join(changing)}",
            (f"{key}.ENABLED", *changing),
        )
    weights = [(f"{MD}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE", md.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.KIND)] + [
        (f"DATASETS.SOURCES[{i}].LOSS_WEIGHT_SCHEDULE", s.LOSS_WEIGHT_SCHEDULE.KIND)
        for i, s in enumerate(cfg.DATASETS.SOURCES)
    ]
    changing = [f"{name}.KIND" for name, kind in weights if kind != "constant"]
    if md.ADAPTIVE.ADAPT_WEIGHTS and changing:
        raise ConfigError(
            f"{key}.ADAPT_WEIGHTS: the weights follow a schedule already ({', '.join(changing)}); "
            "turn one of them off",
            (f"{key}.ADAPT_WEIGHTS", *changing),
        )


def holdout_source_error(name: str, kinds: dict[str, str]) -> str:
    """The one-line error for an ``ADAPTIVE.HOLDOUT_SOURCE`` that is not a real source of the
    run; ``kinds``: the run's sources, ``real`` or ``synthetic`` by name (the demo's too)."""
    real = [n for n, kind in kinds.items() if kind == "real"]
    listing = ", ".join(f"{n} ({kind})" for n, kind in kinds.items())
    return (
        f"{MD}.ADAPTIVE.HOLDOUT_SOURCE={name!r} must name a real source of the run, one of "
        f"{real} (the run's sources: {listing})"
    )


def _check_bounds(
    low: float, high: float, name: str, low_at: str, high_at: str, top: float | None
) -> None:
    """``name``: "NODE.MIN_X / MAX_X"; ``low_at`` / ``high_at``: the nodes the two values were
    read from (a source's bound may be ADAPTIVE's)."""
    ok = math.isfinite(low) and math.isfinite(high) and 0 <= low <= high
    if not ok or (top is not None and high > top):
        upper = f"<= {top:g}" if top is not None else "finite"
        low_name, high_name = name.rsplit(".", 1)[1].split(" / ")
        raise ConfigError(
            f"{name} must satisfy 0 <= low <= high {upper}, got {low}, {high}",
            (f"{low_at}.{low_name}", f"{high_at}.{high_name}"),
        )


def _validate_schedules(cfg: DictConfig) -> None:
    """Builds every schedule once, so that a bad one fails at load time, naming its key."""
    md, max_iter = cfg.DATASETS.MULTI_DATASET, cfg.SOLVER.MAX_ITER
    sources = cfg.DATASETS.SOURCES
    if md.ENABLED and len(sources) == 1 and sources[0].RATIO_SCHEDULE.KIND != "constant":
        # The sampler would divide the schedule by itself: nothing would change but the crash.
        key = "DATASETS.SOURCES[0].RATIO_SCHEDULE"
        raise ConfigError(
            f"{key}.KIND={sources[0].RATIO_SCHEDULE.KIND}: DATASETS.SOURCES holds one source, "
            "which always fills the whole batch (share 1); set KIND constant, or add a source "
            "whose share it would trade against",
            (f"{key}.KIND", "DATASETS.SOURCES"),
        )
    nodes = [
        (md.REAL_SAMPLING_RATIO_SCHEDULE, REAL_RATIO_SCHEDULE, md.REAL_SAMPLING_RATIO, True),
        (
            md.SYNTHETIC_LOSS_WEIGHT_SCHEDULE,
            "DATASETS.MULTI_DATASET.SYNTHETIC_LOSS_WEIGHT_SCHEDULE",
            md.SYNTHETIC_LOSS_WEIGHT,
            False,
        ),
    ]
    for i, src in enumerate(cfg.DATASETS.SOURCES):
        key = f"DATASETS.SOURCES[{i}]"
        nodes.append((src.RATIO_SCHEDULE, f"{key}.RATIO_SCHEDULE", src.RATIO, True))
        nodes.append(
            (src.LOSS_WEIGHT_SCHEDULE, f"{key}.LOSS_WEIGHT_SCHEDULE", src.LOSS_WEIGHT, False)
        )
    for node, key, constant, is_ratio in nodes:
        schedule_or_constant(node, key, constant, max_iter, ratio=is_ratio)


def _validate_sources(cfg: DictConfig) -> None:
    seen: set[str] = set()
    for i, src in enumerate(cfg.DATASETS.SOURCES):
        key = f"DATASETS.SOURCES[{i}]"
        for required in ("NAME", "PATH"):
            if OmegaConf.is_missing(src, required):
                raise ConfigError(f"{key}.{required} is required", f"{key}.{required}")
        if src.NAME in seen:
            raise ConfigError(f"{key}.NAME: duplicate source name {src.NAME!r}", f"{key}.NAME")
        seen.add(src.NAME)
        if src.TYPE not in ("real", "synthetic"):
            raise ConfigError(
                f"{key}.TYPE must be 'real' or 'synthetic', got {src.TYPE!r}", f"{key}.TYPE"
            )
        if src.FORMAT not in ("relcoco", "vg150", "shards"):
            raise ConfigError(
                f"{key}.FORMAT must be 'relcoco', 'vg150' or 'shards', got {src.FORMAT!r}",
                f"{key}.FORMAT",
            )
        if src.FORMAT == "vg150" and src.VAL_SPLIT not in ("val", "test"):
            raise ConfigError(
                f"{key}.VAL_SPLIT must be 'val' or 'test', got {src.VAL_SPLIT!r}",
                (f"{key}.VAL_SPLIT", f"{key}.FORMAT"),
            )
        if src.RATIO is not None:
            check_ratio(src.RATIO, f"{key}.RATIO")
        if src.LOSS_WEIGHT is not None:
            check_weight(src.LOSS_WEIGHT, f"{key}.LOSS_WEIGHT")
        if src.BACKGROUND_WEIGHT is not None:
            check_weight(src.BACKGROUND_WEIGHT, f"{key}.BACKGROUND_WEIGHT")
    explicit = [s.RATIO for s in cfg.DATASETS.SOURCES if s.RATIO is not None]
    if len(explicit) == len(cfg.DATASETS.SOURCES) and explicit and abs(sum(explicit) - 1) > 1e-6:
        raise ConfigError(
            f"DATASETS.SOURCES[*].RATIO must sum to 1, got {sum(explicit):.6g} "
            f"({', '.join(f'{s.NAME}={s.RATIO}' for s in cfg.DATASETS.SOURCES)})",
            tuple(f"DATASETS.SOURCES[{i}].RATIO" for i in range(len(cfg.DATASETS.SOURCES))),
        )


def _validate_demo(demo: DictConfig) -> None:
    """DATASETS.DEMO's preset is known and its knobs are in range."""
    if demo.PRESET not in DEMO_PRESET_CHANGES:
        raise ConfigError(
            f"DATASETS.DEMO.PRESET must be one of {', '.join(DEMO_PRESET_CHANGES)}, got "
            f"{demo.PRESET!r}",
            "DATASETS.DEMO.PRESET",
        )
    for knob in ("LABEL_NOISE", *(name.upper() for name in DEMO_DAMAGE_DEFAULTS)):
        value, key = demo[knob], f"DATASETS.DEMO.{knob}"
        if value is None:
            continue
        if knob == "HUE_SHIFT" and not 0.0 <= value < 360.0:
            raise ConfigError(f"{key} must be in [0, 360) degrees, got {value}", key)
        if knob != "HUE_SHIFT":
            check_ratio(value, key)
