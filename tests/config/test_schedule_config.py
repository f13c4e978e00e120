"""Schedules in the config: keys, precedence, normalization, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from realsynth.config import ConfigError, load_config
from realsynth.config.source_mix import resolve_mix
from realsynth.mixing.sampler import MixedBatchSampler
from realsynth.mixing.step_schedule import StepSchedule
from realsynth.studies.compare import builtin_overrides

MD = "DATASETS.MULTI_DATASET"
SOURCES = """DATASETS:
  SOURCES:
    - {NAME: vg, TYPE: real, FORMAT: vg150, PATH: /data/vg}
    - {NAME: render, TYPE: synthetic, PATH: /data/render.json}
    - {NAME: gen, TYPE: synthetic, PATH: /data/gen.json}
SOLVER:
  MAX_ITER: 1000
"""


def _mix(tmp_path: Path, *overrides: str, sizes=(100, 100, 100)):
    path = tmp_path / "run.yaml"
    path.write_text(SOURCES)
    cfg = load_config(path, list(overrides))
    return resolve_mix(cfg.DATASETS.SOURCES, cfg.DATASETS.MULTI_DATASET, list(sizes), max_iter=1000)


def _values(ratio, steps) -> list[float]:
    if isinstance(ratio, StepSchedule):
        return ratio.values(np.array(steps)).tolist()
    return [ratio] * len(steps)


def test_kind_level_real_share_schedule_splits_the_rest_and_sums_to_one(tmp_path):
    mix = _mix(
        tmp_path,
        f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=linear",
        f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.END_VALUE=1.0",
    )
    steps = [0, 500, 1000, 5000]  # START_VALUE = REAL_SAMPLING_RATIO, END_STEP = MAX_ITER
    real, render, gen = (_values(m.ratio, steps) for m in mix)
    assert real == pytest.approx([0.7, 0.85, 1.0, 1.0])
    assert render == gen == pytest.approx([0.15, 0.075, 0.0, 0.0])
    assert [m.loss_weight for m in mix] == [1.0, 0.5, 0.5]


def test_pretrain_finetune_preset_defaults_to_half_the_run(tmp_path):
    mix = _mix(tmp_path, f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=pretrain_finetune")
    assert _values(mix[0].ratio, [0, 499, 500]) == [0.0, 0.0, 1.0]
    assert _values(mix[1].ratio, [0, 499, 500]) == [0.5, 0.5, 0.0]
    mix = _mix(
        tmp_path,
        f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=pretrain_finetune",
        f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.PRETRAIN_STEPS=200",
        f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.PRETRAIN_REAL_RATIO=0.2",
        f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.FINETUNE_REAL_RATIO=0.9",
    )
    assert _values(mix[0].ratio, [199, 200]) == pytest.approx([0.2, 0.9])


def test_source_schedule_wins_over_source_value_and_kind_schedule(tmp_path):
    mix = _mix(
        tmp_path,
        f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=linear",
        f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.END_VALUE=1.0",
        "DATASETS.SOURCES[2].RATIO=0.1",
        "DATASETS.SOURCES[2].RATIO_SCHEDULE.KIND=steps",
        "DATASETS.SOURCES[2].RATIO_SCHEDULE.BREAKPOINTS=[[300,0.0]]",
        f"{MD}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.KIND=cosine",
        f"{MD}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.END_VALUE=0.0",
        "DATASETS.SOURCES[1].LOSS_WEIGHT=0.3",
    )
    # gen: its own steps schedule, starting at its RATIO; vg / render: the kind-level schedule.
    assert _values(mix[2].ratio, [0, 299, 300]) == [0.1, 0.1, 0.0]
    assert _values(mix[0].ratio, [0]) == pytest.approx([0.7])
    # Weights: render's LOSS_WEIGHT beats the kind schedule, which gen follows (0.5 -> 0).
    assert mix[1].loss_weight == 0.3
    assert _values(mix[2].loss_weight, [0, 500, 1000]) == pytest.approx([0.5, 0.25, 0.0])


def test_unnormalized_source_schedules_are_normalized_by_the_sampler(tmp_path):
    mix = _mix(
        tmp_path,
        "DATASETS.SOURCES[0].RATIO=0.5",
        "DATASETS.SOURCES[1].RATIO=0.25",
        "DATASETS.SOURCES[2].RATIO=0.25",
        "DATASETS.SOURCES[0].RATIO_SCHEDULE.KIND=linear",
        "DATASETS.SOURCES[0].RATIO_SCHEDULE.END_VALUE=1.0",
    )
    sampler = MixedBatchSampler([100, 100, 100], [m.ratio for m in mix], 16)
    # At the end the values are 1.0, 0.25, 0.25: shares 2/3, 1/6, 1/6.
    assert sampler.target_shares(1000) == pytest.approx([2 / 3, 1 / 6, 1 / 6], abs=2e-5)
    assert sampler.target_shares(0) == pytest.approx([0.5, 0.25, 0.25])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=linear"],
            r"REAL_SAMPLING_RATIO_SCHEDULE: END_VALUE is required for KIND linear",
        ),
        (
            [
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=cosine",
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.END_VALUE=1.2",
            ],
            r"REAL_SAMPLING_RATIO_SCHEDULE: every value must be in \[0, 1\], got 0.7 .. 1.2",
        ),
        (
            [
                "DATASETS.SOURCES[1].RATIO_SCHEDULE.KIND=steps",
                "DATASETS.SOURCES[1].RATIO_SCHEDULE.START_VALUE=0.2",
                "DATASETS.SOURCES[1].RATIO_SCHEDULE.BREAKPOINTS=[[10,0.1],[10,0.3]]",
            ],
            r"SOURCES\[1\]\.RATIO_SCHEDULE: breakpoints\[1\]: steps must be strictly increasing",
        ),
        (
            ["DATASETS.SOURCES[1].RATIO_SCHEDULE.KIND=linear"],
            r"SOURCES\[1\]\.RATIO_SCHEDULE\.START_VALUE is required",
        ),
        (
            ["DATASETS.SOURCES[2].LOSS_WEIGHT_SCHEDULE.KIND=pretrain_finetune"],
            r"SOURCES\[2\]\.LOSS_WEIGHT_SCHEDULE\.KIND: pretrain_finetune is a preset of",
        ),
        (
            [
                f"{MD}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.KIND=steps",
                f"{MD}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.BREAKPOINTS=[[5,-1.0]]",
            ],
            r"SYNTHETIC_LOSS_WEIGHT_SCHEDULE: every value must be finite and >= 0",
        ),
        (
            [f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=exponential"],
            r"REAL_SAMPLING_RATIO_SCHEDULE\.KIND must be one of",
        ),
        (
            [
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=linear",
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.END_VALUE=1.0",
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.START_STEP=500",
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.END_STEP=100",
            ],
            r"end_step \(100\) must be >= start_step \(500\)",
        ),
    ],
)
def test_bad_schedules_are_one_line_errors_naming_the_key(tmp_path, overrides, message):
    path = tmp_path / "run.yaml"
    path.write_text(SOURCES)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path, overrides)
    assert "\n" not in str(error.value)


def test_source_with_a_scheduled_share_but_no_items_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="source 'render' has ratio linear 0.15 -> 0"):
        _mix(
            tmp_path,
            f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=linear",
            f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.END_VALUE=1.0",
            sizes=(100, 0, 100),
        )


def test_naive_variant_turns_every_schedule_off(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(SOURCES)
    scheduled = [
        f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=pretrain_finetune",
        "DATASETS.SOURCES[1].LOSS_WEIGHT_SCHEDULE.KIND=linear",
        "DATASETS.SOURCES[1].LOSS_WEIGHT_SCHEDULE.START_VALUE=1.0",
        "DATASETS.SOURCES[1].LOSS_WEIGHT_SCHEDULE.END_VALUE=0.0",
    ]
    cfg = load_config(path, scheduled)
    naive = load_config(path, scheduled + builtin_overrides(cfg, "naive"))
    mix = resolve_mix(
        naive.DATASETS.SOURCES, naive.DATASETS.MULTI_DATASET, [100, 300, 600], max_iter=1000
    )
    assert [m.ratio for m in mix] == pytest.approx([0.1, 0.3, 0.6])
    assert [m.loss_weight for m in mix] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=linear",
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.END_VALUE=1.0",
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.END_STEP=1500",
            ],
            f"command line: {MD}.REAL_SAMPLING_RATIO_SCHEDULE.END_STEP=1500 is beyond "
            "SOLVER.MAX_ITER=1000: the run never gets there; lower it to at most 1000 or raise "
            "SOLVER.MAX_ITER",
        ),
        (
            [
                "DATASETS.SOURCES[1].LOSS_WEIGHT_SCHEDULE.KIND=cosine",
                "DATASETS.SOURCES[1].LOSS_WEIGHT_SCHEDULE.START_VALUE=1.0",
                "DATASETS.SOURCES[1].LOSS_WEIGHT_SCHEDULE.END_VALUE=0.0",
                "DATASETS.SOURCES[1].LOSS_WEIGHT_SCHEDULE.START_STEP=1001",
                "DATASETS.SOURCES[1].LOSS_WEIGHT_SCHEDULE.END_STEP=1002",
            ],
            "command line: DATASETS.SOURCES[1].LOSS_WEIGHT_SCHEDULE.START_STEP=1001 is beyond "
            "SOLVER.MAX_ITER=1000",
        ),
        (
            [
                f"{MD}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.KIND=steps",
                f"{MD}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.BREAKPOINTS=[[500,0.2],[5000,0.0]]",
            ],
            f"command line: {MD}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.BREAKPOINTS[1] step 5000 is "
            "beyond SOLVER.MAX_ITER=1000",
        ),
        (
            [
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=pretrain_finetune",
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.PRETRAIN_STEPS=2000",
            ],
            f"command line: {MD}.REAL_SAMPLING_RATIO_SCHEDULE.PRETRAIN_STEPS=2000 is beyond "
            "SOLVER.MAX_ITER=1000",
        ),
        (  # MAX_ITER lowered on the command line below the file's ramp
            [
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=linear",
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.END_VALUE=1.0",
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.END_STEP=1000",
                "SOLVER.MAX_ITER=999",
            ],
            "END_STEP=1000 is beyond SOLVER.MAX_ITER=999",
        ),
    ],
)
def test_a_schedule_step_beyond_max_iter_is_refused_naming_the_key(tmp_path, overrides, message):
    path = tmp_path / "run.yaml"
    path.write_text(SOURCES)
    with pytest.raises(ConfigError) as error:
        load_config(path, overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_schedule_that_ends_at_max_iter_is_fine(tmp_path):
    mix = _mix(
        tmp_path,
        f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=linear",
        f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.END_VALUE=1.0",
        f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.START_STEP=1000",
        f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.END_STEP=1000",
        f"{MD}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.KIND=steps",
        f"{MD}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.BREAKPOINTS=[[1000,0.0]]",
    )
    assert _values(mix[2].loss_weight, [999, 1000]) == [0.5, 0.0]
    path = tmp_path / "run.yaml"
    key = f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE"
    load_config(path, [f"{key}.KIND=pretrain_finetune", f"{key}.PRETRAIN_STEPS=1000"])


ONE_SOURCE = "DATASETS:\n  SOURCES:\n    - {NAME: vg, TYPE: real, FORMAT: vg150, PATH: /data/vg}\n"


def test_a_share_schedule_on_the_only_source_is_refused_at_load_time(tmp_path):
    path = tmp_path / "one.yaml"
    path.write_text(ONE_SOURCE)
    schedule = [
        "DATASETS.SOURCES[0].RATIO_SCHEDULE.KIND=linear",
        "DATASETS.SOURCES[0].RATIO_SCHEDULE.START_VALUE=0.2",
        "DATASETS.SOURCES[0].RATIO_SCHEDULE.END_VALUE=0.9",
    ]
    with pytest.raises(ConfigError) as error:
        load_config(path, schedule)
    assert str(error.value) == (
        "command line: DATASETS.SOURCES[0].RATIO_SCHEDULE.KIND=linear: DATASETS.SOURCES holds "
        "one source, which always fills the whole batch (share 1); set KIND constant, or add a "
        "source whose share it would trade against"
    )
    # Without the mix (real sources only, by size) every share schedule is unused: no error.
    cfg = load_config(path, [*schedule, f"{MD}.ENABLED=false"])
    (mix,) = resolve_mix(cfg.DATASETS.SOURCES, cfg.DATASETS.MULTI_DATASET, [10], max_iter=10)
    assert mix.ratio == 1.0
    # A weight schedule on the only source is meaningful.
    load_config(
        path,
        [
            "DATASETS.SOURCES[0].LOSS_WEIGHT_SCHEDULE.KIND=linear",
            "DATASETS.SOURCES[0].LOSS_WEIGHT_SCHEDULE.START_VALUE=1.0",
            "DATASETS.SOURCES[0].LOSS_WEIGHT_SCHEDULE.END_VALUE=0.5",
        ],
    )


def test_a_share_schedule_on_the_only_source_with_a_share_is_refused(tmp_path):
    # The other sources get share 0: the scheduled one would always fill the whole batch.
    with pytest.raises(ConfigError, match=r"SOURCES\[0\]\.RATIO_SCHEDULE: source 'vg' is the only"):
        _mix(
            tmp_path,
            "DATASETS.SOURCES[0].RATIO_SCHEDULE.KIND=linear",
            "DATASETS.SOURCES[0].RATIO_SCHEDULE.START_VALUE=0.2",
            "DATASETS.SOURCES[0].RATIO_SCHEDULE.END_VALUE=0.9",
            "DATASETS.SOURCES[1].RATIO=0.0",
            "DATASETS.SOURCES[2].RATIO=0.0",
        )
