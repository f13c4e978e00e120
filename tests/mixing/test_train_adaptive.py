"""Adaptive mixing in the trainer: holdout, logged trajectory, determinism, resume, behaviour."""

from __future__ import annotations

import json
import os
import signal

import pytest
from tiny_runs import AtStep, assert_same_records, tiny_config, train_records

from realsynth.config import ConfigError, load_config
from realsynth.training.data_setup import build_data
from realsynth.training.run_log import read_metrics
from realsynth.training.train import TrainingInterrupted, train

A = "DATASETS.MULTI_DATASET.ADAPTIVE"
ADAPTIVE = (
    "SOLVER.MAX_ITER=12",
    "SOLVER.CHECKPOINT_PERIOD=100",
    "TEST.EVAL_PERIOD=100",
    f"{A}.ENABLED=true",
    f"{A}.INTERVAL=3",
    f"{A}.HOLDOUT_IMAGES=5",
    f"{A}.HOLDOUT_BATCH=4",
    f"{A}.STEP_SIZE=4.0",
    f"{A}.SMOOTHING=0.0",
)


def adaptive_records(run) -> list[dict]:
    return [r for r in read_metrics(run) if r["kind"] == "adaptive"]


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory, demo_root):
    tmp = tmp_path_factory.mktemp("adaptive")
    train(tiny_config(tmp, *ADAPTIVE, demo_root=demo_root))
    return tmp / "run"


def test_the_holdout_is_carved_from_real_training_and_recorded(tmp_path, demo_root, adaptive_run):
    cfg = tiny_config(tmp_path, *ADAPTIVE, demo_root=demo_root)
    data = build_data(cfg)
    real = data.names.index("real")
    training = set(data.train[real].indices)
    recorded = json.loads((adaptive_run / "holdout.json").read_text())
    assert recorded["source"] == "real" and len(recorded["indices"]) == 5
    assert training.isdisjoint(recorded["indices"])
    assert len(training) + 5 == 24  # the tiny demo's real training images
    assert recorded["images"] == [
        data.holdout.dataset.dataset.image_path(i).name for i in recorded["indices"]
    ]
    plain = build_data(tiny_config(tmp_path, demo_root=demo_root))
    assert plain.holdout is None and len(plain.train[real]) == 24


def test_decisions_are_logged_and_rule_the_batches_one_interval_later(adaptive_run):
    decisions = adaptive_records(adaptive_run)
    assert [d["step"] for d in decisions] == [3, 6, 9]  # none after the last step (12)
    assert [d["from_step"] for d in decisions] == [6, 9, 12]
    trained = {r["step"]: r for r in train_records(adaptive_run)}
    for d in decisions[:2]:
        # Record step s trains the batch drawn for step s - 1.
        share = trained[d["from_step"] + 1]["target_share/real"]
        assert share == pytest.approx(d["decided_share/real"], abs=2**-16)
        real_items = trained[d["from_step"] + 1]["items/real"]
        assert real_items in (int(share * 8), int(share * 8) + 1)
    for step in range(1, 7):  # before the first decision is in force: the configured mix
        assert trained[step]["target_share/real"] == pytest.approx(0.7, abs=2**-16)
    moved = {round(d["decided_share/real"], 6) for d in decisions}
    assert len(moved) > 1  # the shares really moved
    assert (adaptive_run / "mix_schedule.png").read_bytes()[:4] == b"\x89PNG"


def test_same_seed_gives_the_same_trajectory(tmp_path, demo_root, adaptive_run):
    train(tiny_config(tmp_path, *ADAPTIVE, demo_root=demo_root))
    assert adaptive_records(tmp_path / "run") == adaptive_records(adaptive_run)
    assert_same_records(train_records(tmp_path / "run"), train_records(adaptive_run))


def test_resume_mid_run_reproduces_the_uninterrupted_run(tmp_path, demo_root, adaptive_run):
    cfg = tiny_config(tmp_path, *ADAPTIVE, demo_root=demo_root)
    # Stop after step 7: two decisions made, the second not yet in force.
    ctrl_c = AtStep(7, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(TrainingInterrupted, match="checkpoint of step 7"):
        train(cfg, callbacks=[ctrl_c])
    train(cfg, resume=True)
    assert adaptive_records(tmp_path / "run") == adaptive_records(adaptive_run)
    assert_same_records(train_records(tmp_path / "run"), train_records(adaptive_run))


def test_adaptive_settings_do_nothing_while_it_is_off(tmp_path, demo_root):
    base = ("SOLVER.MAX_ITER=4", "TEST.EVAL_PERIOD=100")
    train(tiny_config(tmp_path / "a", *base, demo_root=demo_root))
    off = [f"{A}.ENABLED=false", f"{A}.HOLDOUT_IMAGES=5", f"{A}.INTERVAL=1"]
    train(tiny_config(tmp_path / "b", *base, *off, demo_root=demo_root))
    assert_same_records(train_records(tmp_path / "a/run"), train_records(tmp_path / "b/run"))
    assert not (tmp_path / "b/run/holdout.json").exists()
    assert adaptive_records(tmp_path / "b/run") == []


BEHAVIOUR = (
    "SOLVER.MAX_ITER=120",
    "SOLVER.IMS_PER_BATCH=16",
    "TEST.EVAL_PERIOD=0",
    f"{A}.ENABLED=true",
    f"{A}.INTERVAL=5",
    f"{A}.HOLDOUT_BATCH=16",
    f"{A}.SCORE=projection",
)


#: A real set large enough not to be memorized in 120 steps (a memorized real set stops
#: aligning with the holdout and the method then favours the synthetic boxes: docs/adaptive.md),
#: and a synthetic set whose every class and predicate is wrong.
WRONG_LABELS = (
    "DATASETS.DEMO.REAL_TRAIN=400",
    "DATASETS.DEMO.REAL_VAL=100",
    "DATASETS.DEMO.SYNTHETIC_TRAIN=400",
    "DATASETS.DEMO.LABEL_NOISE=1.0",
)


@pytest.fixture(scope="module")
def wrong_label_demo(tmp_path_factory):
    """The WRONG_LABELS demo, generated once for the behaviour tests of this module."""
    from realsynth.training.demo_cache import ensure_demo_data

    root = tmp_path_factory.mktemp("wrong_labels")
    ensure_demo_data(tiny_config(tmp_path_factory.mktemp("gen"), *WRONG_LABELS, demo_root=root))
    return root


@pytest.mark.parametrize("seed", [0, 1])
def test_a_synthetic_source_with_wrong_labels_falls_to_its_minimum_share(
    tmp_path, wrong_label_demo, seed
):
    cfg = tiny_config(
        tmp_path,
        *BEHAVIOUR,
        *WRONG_LABELS,
        f"SEED={seed}",
        f"{A}.HOLDOUT_IMAGES=64",
        demo_root=wrong_label_demo,
    )
    train(cfg)
    shares = [d["decided_share/synthetic"] for d in adaptive_records(tmp_path / "run")]
    assert shares[-1] <= 0.1, shares  # it starts at the configured 0.3


@pytest.mark.parametrize("seed", [0, 1])
def test_an_exact_copy_of_the_real_training_set_keeps_its_share(tmp_path, wrong_label_demo, seed):
    # The "synthetic" source is the real training file itself: it must not lose to the real
    # source. The cosine score sends it to its minimum (a smaller share, a noisier gradient,
    # a smaller cosine: docs/adaptive.md); the projection score does not depend on the share.
    real = wrong_label_demo / "real"

    def source(name: str, kind: str, split: str, extra: str = "") -> str:
        return f"{{NAME: {name}, TYPE: {kind}, PATH: {real}/{split}/annotations.json{extra}}}"

    scored = f", VAL_PATH: {real}/test/annotations.json"  # the final evaluation's
    sources = [source("real", "real", "train", scored), source("copy", "synthetic", "train")]
    sources.append(source("holdout", "real", "val"))  # the holdout: not in either copy
    cfg = tiny_config(
        tmp_path,
        *BEHAVIOUR,
        f"SEED={seed}",
        f"DATASETS.SOURCES=[{', '.join(sources)}]",
        f"{A}.HOLDOUT_SOURCE=holdout",
    )
    train(cfg)
    shares = [d["decided_share/copy"] for d in adaptive_records(tmp_path / "run")]
    assert min(shares[-8:]) >= 0.15, shares  # it starts at 0.3; the minimum is 0.05


def test_bad_adaptive_configs_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="set every ratio schedule's KIND to constant"):
        load_config(
            None,
            [
                f"{A}.ENABLED=true",
                "DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO_SCHEDULE.KIND=linear",
                "DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO_SCHEDULE.END_VALUE=1.0",
            ],
        )
    with pytest.raises(ConfigError, match="SMOOTHING must be in \\[0, 1\\), got 1.5"):
        load_config(None, [f"{A}.SMOOTHING=1.5"])
    with pytest.raises(ConfigError, match="MIN_RATIO / MAX_RATIO must satisfy"):
        load_config(None, [f"{A}.MIN_RATIO=0.6", f"{A}.MAX_RATIO=0.4"])
    with pytest.raises(ConfigError, match="HOLDOUT_IMAGES=30: source 'real' has 24 training"):
        build_data(tiny_config(tmp_path, f"{A}.ENABLED=true", f"{A}.HOLDOUT_IMAGES=30"))
