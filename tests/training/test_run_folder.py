"""The run folder is the user's data: refusal, lock, rotation, fallback, finished runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_runs import assert_same_records, tiny_config, train_records

from realsynth.training.checkpoint import load_checkpoint
from realsynth.training.run_folder import RunFolder, RunFolderError
from realsynth.training.run_log import read_metrics
from realsynth.training.train import train


def test_train_into_a_folder_that_holds_a_run_is_refused_until_told(tmp_path, demo_root):
    cfg = tiny_config(tmp_path, "SOLVER.MAX_ITER=2", demo_root=demo_root)
    train(cfg)
    run = tmp_path / "run"
    before = {p: p.read_bytes() for p in (run / "metrics.jsonl", run / "checkpoints" / "last.pt")}
    with pytest.raises(RunFolderError) as info:
        train(cfg)
    message = str(info.value)
    assert f"`realsynth train --resume {run}`" in message and "--overwrite" in message
    assert all(p.read_bytes() == data for p, data in before.items())  # nothing touched
    (run / "notes.txt").write_text("mine")
    (run / "eval_last.json").write_text("{}")
    train(tiny_config(tmp_path, "SOLVER.MAX_ITER=3", demo_root=demo_root), overwrite=True)
    assert [r["step"] for r in train_records(run)] == [1, 2, 3]
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own outputs are replaced
    assert not (run / "eval_last.json").exists()


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from realsynth.training.run_folder import RunFolder
    RunFolder(sys.argv[1]).lock()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_a_second_process_into_a_locked_folder_fails_naming_the_holder(tmp_path, demo_root):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=rf"in use by another run \(process {holder.pid}"):
            train(tiny_config(tmp_path, "SOLVER.MAX_ITER=1", demo_root=demo_root))
        assert not (run / "config.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The lock died with its process: the stale .lock file does not block the next run.
    assert (run / ".lock").exists()
    train(tiny_config(tmp_path, "SOLVER.MAX_ITER=1", demo_root=demo_root))
    folder = RunFolder(run)
    folder.lock()
    assert f"process {os.getpid()}" in (run / ".lock").read_text()
    folder.unlock()


def test_the_newest_step_checkpoints_and_the_best_are_kept(tmp_path, demo_root, monkeypatch):
    scores = iter([0.2, 0.5, 0.3, 0.4])  # evaluations at steps 2, 4, 6 and the final one at 8

    def fake_summaries(evaluators):
        value = next(scores)
        return {name: {"R@50": value} for name in evaluators}

    monkeypatch.setattr("realsynth.training.loop.summaries", fake_summaries)
    cfg = tiny_config(
        tmp_path,
        "SOLVER.MAX_ITER=8",
        "SOLVER.CHECKPOINT_PERIOD=2",
        "SOLVER.KEEP_CHECKPOINTS=2",
        "TEST.EVAL_PERIOD=2",
        demo_root=demo_root,
    )
    train(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "best.pt",
        "last.pt",
        "step_00000006.pt",
        "step_00000008.pt",
    ]
    assert load_checkpoint(ckpts / "last.pt")["run_state"]["step"] == 8
    best = load_checkpoint(ckpts / "best.pt")["run_state"]
    assert (best["step"], best["best_step"], best["best_value"]) == (4, 4, 0.5)


def test_resume_falls_back_to_the_newest_readable_checkpoint(tmp_path, demo_root, capsys):
    # A constant LR: the cut run's first steps must not depend on its shorter MAX_ITER.
    common = (
        "SOLVER.MAX_ITER=6",
        "SOLVER.CHECKPOINT_PERIOD=2",
        "TEST.EVAL_PERIOD=0",
        "SOLVER.LR_SCHEDULE=constant",
    )
    train(tiny_config(tmp_path / "a", *common, demo_root=demo_root))
    reference = train_records(tmp_path / "a" / "run")
    cut = tiny_config(tmp_path / "b", *common, "SOLVER.MAX_ITER=5", demo_root=demo_root)
    train(cut)  # checkpoints at steps 2, 4 and the final 5
    ckpts = tmp_path / "b" / "run" / "checkpoints"
    (ckpts / "last.pt").write_bytes(b"truncated")  # last.pt and step 5 share their bytes
    capsys.readouterr()
    torch.manual_seed(99)
    train(tiny_config(tmp_path / "b", *common, demo_root=demo_root), resume=True)
    out = capsys.readouterr().out
    # last.pt and step 5 are passed over, each with its reason, and the line says so.
    assert (
        "realsynth: resuming from checkpoints/step_00000004.pt (step 4; last.pt is unreadable ("
        in out
    )
    assert "; step_00000005.pt is unreadable (" in out
    assert_same_records(train_records(tmp_path / "b" / "run"), reference)


def test_resuming_a_finished_run_says_so_and_logs_nothing_new(tmp_path, demo_root, capsys):
    cfg = tiny_config(tmp_path, "SOLVER.MAX_ITER=2", demo_root=demo_root)
    results = train(cfg)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert train(cfg, resume=True) == results
    assert (
        "finished at step 2 (SOLVER.MAX_ITER=2); raise SOLVER.MAX_ITER" in capsys.readouterr().out
    )
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    # A run killed during its final evaluation does that evaluation on resume, once.
    (tmp_path / "run" / "eval.json").unlink()
    assert train(cfg, resume=True) == results
    finals = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "eval" and r["final"]]
    assert [r["step"] for r in finals] == [2]
