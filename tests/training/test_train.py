"""The trainer end to end on a tiny demo set: run folder contents, loss bookkeeping, resume."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from tiny_runs import AtStep, assert_same_records, tiny_config, train_records

from realsynth.config import load_config, to_yaml
from realsynth.training.checkpoint import load_checkpoint
from realsynth.training.run_log import read_metrics
from realsynth.training.train import TrainingInterrupted, train

METRICS = {"R@20", "R@50", "R@100", "ngR@20", "ngR@50", "ngR@100", "mR@20", "mR@50", "mR@100"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, demo_root):
    tmp = tmp_path_factory.mktemp("finished")
    cfg = tiny_config(
        tmp,
        "SOLVER.MAX_ITER=6",
        "SOLVER.CHECKPOINT_PERIOD=3",
        "TEST.EVAL_PERIOD=4",
        demo_root=demo_root,
    )
    results = train(cfg)
    return cfg, results, tmp / "run"


def test_run_folder_holds_config_metrics_checkpoint_eval_and_plots(finished_run):
    cfg, results, run = finished_run
    assert (run / "config.yaml").read_text().count("MAX_ITER: 6") == 1
    saved = json.loads((run / "eval.json").read_text())
    assert saved == results
    assert set(saved) == {"real", "synthetic"}
    final = [r for r in read_metrics(run) if r["kind"] == "eval" and r["final"]]
    assert len(final) == 1 and final[0]["step"] == 6
    for source, metrics in saved.items():
        assert set(metrics) == METRICS  # no zero-shot triplets configured: no zsR@K
        # The final evaluation logged and the results returned are the same numbers.
        assert {k: final[0][f"{source}/{k}"] for k in metrics} == metrics
    for plot in ("loss_per_source.png", "recall.png"):
        assert (run / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = load_checkpoint(run)
    assert ckpt["run_state"]["step"] == 6
    assert {"model", "optimizer", "scheduler", "sampler", "rng", "config"} <= set(ckpt)


def test_metrics_total_is_the_coefficient_sum_and_diagnostics_stay_out(finished_run):
    _, _, run = finished_run
    records = read_metrics(run)
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4, 5, 6]
    # Evaluation at step 4 (TEST.EVAL_PERIOD) and at the end.
    evals = [(r["step"], r["final"]) for r in records if r["kind"] == "eval"]
    assert evals == [(4, False), (6, True)]
    coefficient = {"loss_relation": 1.0, "loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    for record in train_records:
        terms = {k: v for k, v in record.items() if k.startswith("loss_")}
        # 7 relation terms for the last layer and again for the one auxiliary layer.
        assert len(terms) == 14
        expected = sum(
            coefficient[next(c for c in coefficient if k.startswith(c))] * v
            for k, v in terms.items()
        )
        assert record["total"] == pytest.approx(expected, rel=1e-5)
        for source in ("real", "synthetic"):
            assert math.isfinite(record[f"source_loss/{source}"])
            assert f"diag/loss_relation/{source}" in record


def test_resume_after_ctrl_c_reproduces_the_uninterrupted_run(tmp_path, demo_root):
    common = ("SOLVER.MAX_ITER=6", "SOLVER.CHECKPOINT_PERIOD=100", "TEST.EVAL_PERIOD=100")
    train(tiny_config(tmp_path / "a", *common, demo_root=demo_root))
    reference = train_records(tmp_path / "a" / "run")

    cut = tiny_config(tmp_path / "b", *common, demo_root=demo_root)
    # Ctrl-C arrives once step 4 has its batch: the step completes, then the run stops.
    ctrl_c = AtStep(4, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(TrainingInterrupted, match=r"saved the checkpoint of step 4; continue"):
        train(cut, callbacks=[ctrl_c])
    assert load_checkpoint(tmp_path / "b" / "run")["run_state"]["step"] == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    train(cut, resume=True)
    assert_same_records(train_records(tmp_path / "b" / "run"), reference)


def test_resume_refuses_a_different_seed_or_global_batch(finished_run):
    cfg, _, run = finished_run
    for change in ("SEED=7", "SOLVER.IMS_PER_BATCH=4"):
        changed = load_config(None, [change], base_yaml=to_yaml(cfg))
        with pytest.raises(ValueError, match=r"written with SEED=0 and global batch 8"):
            train(changed, resume=True)


def _children() -> list[int]:
    tasks = Path(f"/proc/{os.getpid()}/task")
    return [int(p) for t in tasks.iterdir() for p in (t / "children").read_text().split()]


def test_workers_survive_ctrl_c_and_resume_matches_a_run_without_workers(tmp_path, demo_root):
    common = ("SOLVER.MAX_ITER=5", "SOLVER.CHECKPOINT_PERIOD=100", "TEST.EVAL_PERIOD=100")
    train(tiny_config(tmp_path / "a", *common, demo_root=demo_root))
    reference = train_records(tmp_path / "a" / "run")

    workers = tiny_config(tmp_path / "b", *common, "DATALOADER.NUM_WORKERS=2", demo_root=demo_root)

    def terminal_ctrl_c():
        # A terminal's Ctrl-C reaches the loader workers too; the run must still stop cleanly
        # after this step and resume exactly, prefetched batches notwithstanding.
        for pid in [*_children(), os.getpid()]:
            os.kill(pid, signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="checkpoint of step 2"):
        train(workers, callbacks=[AtStep(2, terminal_ctrl_c)])
    train(workers, resume=True)
    resumed = train_records(tmp_path / "b" / "run")
    # Same losses as the run without workers: augmentation is tied to (seed, epoch, item).
    assert len(resumed) == len(reference) == 5
    for ours, theirs in zip(resumed, reference):
        assert ours["total"] == pytest.approx(theirs["total"], rel=1e-6)


def test_second_ctrl_c_before_any_checkpoint_says_nothing_was_saved(tmp_path, demo_root):
    cfg = tiny_config(tmp_path, "SOLVER.MAX_ITER=4", demo_root=demo_root)

    def two_ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the second one stops at once, inside step 1

    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, callbacks=[AtStep(1, two_ctrl_c)])
    message = str(info.value)
    assert "nothing was saved" in message and "--resume" not in message
    assert info.value.saved_step is None
    # The folder holds no run, so the same command starts again (no --overwrite needed).
    assert not (tmp_path / "run" / "config.yaml").exists()
    train(cfg)
    assert len(train_records(tmp_path / "run")) == 4


def test_eval_period_zero_evaluates_only_at_the_end(tmp_path, demo_root):
    train(tiny_config(tmp_path, "SOLVER.MAX_ITER=4", "TEST.EVAL_PERIOD=0", demo_root=demo_root))
    evals = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "eval"]
    assert [(r["step"], r["final"]) for r in evals] == [(4, True)]


class _Records:
    def __init__(self):
        self.steps = []

    def on_step_end(self, step, record):
        self.steps.append((step, record["total"]))


def test_losses_fetched_every_log_period_are_the_same_and_reach_callbacks(tmp_path, demo_root):
    common = ("SOLVER.MAX_ITER=7", "TEST.EVAL_PERIOD=0", "SOLVER.CHECKPOINT_PERIOD=100")
    every = _Records()
    train(
        tiny_config(tmp_path / "a", *common, "SOLVER.LOG_PERIOD=1", demo_root=demo_root),
        callbacks=[every],
    )
    batched = _Records()
    train(
        tiny_config(tmp_path / "b", *common, "SOLVER.LOG_PERIOD=3", demo_root=demo_root),
        callbacks=[batched],
    )
    assert_same_records(
        train_records(tmp_path / "b" / "run"), train_records(tmp_path / "a" / "run")
    )
    assert batched.steps == every.steps and [s for s, _ in every.steps] == list(range(1, 8))


def test_a_batch_whose_images_were_all_skipped_takes_no_step(tmp_path, capsys):
    from realsynth.training import build

    cfg = tiny_config(
        tmp_path,
        "SOLVER.MAX_ITER=6",
        "TEST.EVAL_PERIOD=0",
        "DATALOADER.SKIP_BAD_SAMPLES=true",
    )
    data = build.build_data(cfg)
    loader = build.build_train_loader(cfg, data)
    second = loader.batch_sampler.batches(1, 2)[0].tolist()
    for g in second:
        k, local = loader.dataset.source_of(g)
        data.train[k].image_path(local).write_bytes(b"broken")
    train(cfg)
    out = capsys.readouterr().out
    assert "1 batch(es) had every image skipped and took no step." in out
    assert [r["step"] for r in train_records(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(tmp_path / "run")["run_state"]["empty_batches"] == 1
