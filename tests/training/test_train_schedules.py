"""The trainer under a share and a loss-weight schedule: logged mix, weights in the loss, resume."""

from __future__ import annotations

import os
import signal

import pytest
from tiny_runs import AtStep, assert_same_records, tiny_config, train_records

from realsynth.training.train import TrainingInterrupted, train

MD = "DATASETS.MULTI_DATASET"
# Synthetic pre-training for 3 steps, then real only; the synthetic weight falls 0.5 -> 0.
SCHEDULED = (
    "SOLVER.MAX_ITER=6",
    "SOLVER.CHECKPOINT_PERIOD=100",
    "TEST.EVAL_PERIOD=100",
    f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=pretrain_finetune",
    f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.PRETRAIN_STEPS=3",
    f"{MD}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.KIND=linear",
    f"{MD}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.END_VALUE=0.0",
)
TERMS = ("loss_relation", "loss_ce_subject", "loss_bbox_object", "loss_giou_subject")


@pytest.fixture(scope="module")
def scheduled_run(tmp_path_factory, demo_root):
    tmp = tmp_path_factory.mktemp("scheduled")
    train(tiny_config(tmp, *SCHEDULED, demo_root=demo_root))
    return tmp / "run"


def test_metrics_log_target_share_achieved_items_and_weight(scheduled_run):
    records = train_records(scheduled_run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for r in records:
        pretraining = r["step"] <= 3  # record step s trains the batch drawn for step s - 1
        assert r["target_share/real"] == (0.0 if pretraining else 1.0)
        assert r["target_share/synthetic"] == (1.0 if pretraining else 0.0)
        assert (r["items/real"], r["items/synthetic"]) == (
            (0.0, 8.0) if pretraining else (8.0, 0.0)
        )
        assert r["weight/synthetic"] == pytest.approx(0.5 * (1 - (r["step"] - 1) / 6))
        assert r["weight/real"] == 1.0
        assert ("source_loss/real" in r) == (not pretraining)
    assert (scheduled_run / "mix_schedule.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_weight_in_force_scales_every_synthetic_term(scheduled_run):
    for r in train_records(scheduled_run)[:3]:  # all-synthetic batches
        for term in TERMS:
            # loss_<term> is the weighted mean; diag/<term>/synthetic the unweighted one.
            expected = r["weight/synthetic"] * r[f"diag/{term}/synthetic"]
            assert r[term] == pytest.approx(expected, rel=1e-5)


def test_resume_mid_schedule_reproduces_the_uninterrupted_run(tmp_path, demo_root, scheduled_run):
    cut = tiny_config(tmp_path, *SCHEDULED, demo_root=demo_root)
    # Stop after step 2, inside the pre-training phase; resume crosses the switch.
    ctrl_c = AtStep(2, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(TrainingInterrupted, match="checkpoint of step 2"):
        train(cut, callbacks=[ctrl_c])
    train(cut, resume=True)
    assert_same_records(train_records(tmp_path / "run"), train_records(scheduled_run))


def test_start_up_summary_prints_the_schedules(tmp_path, demo_root, capsys):
    train(tiny_config(tmp_path, *SCHEDULED[:1], *SCHEDULED[3:], demo_root=demo_root))
    out = capsys.readouterr().out
    assert "real (real) share pretrain_finetune 0 for 3 steps, then 1 weight 1" in out
    assert "weight linear 0.5 -> 0 over steps 0..6" in out


def test_resume_under_another_ratio_schedule_is_refused(scheduled_run):
    from realsynth.config import load_config, to_yaml

    saved = load_config(None, base_yaml=(scheduled_run / "config.yaml").read_text())
    changed = load_config(
        None,
        ["SOLVER.MAX_ITER=8", f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.PRETRAIN_STEPS=4"],
        base_yaml=to_yaml(saved),
    )
    with pytest.raises(ValueError, match="written with the ratio schedules .*'pretrain_steps': 3"):
        train(changed, resume=True)
