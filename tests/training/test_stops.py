"""What a stopped run keeps and says: a full disk, SIGTERM, Ctrl-C during the final evaluation;
what ``--resume`` restores (and why that file), what it refuses (a changed config, a checkpoint
of another model)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import TINY, tiny_config, train_records

from realsynth.cli import main
from realsynth.config import to_yaml
from realsynth.training import build, build_model
from realsynth.training.checkpoint import RESUME_KEYS, CheckpointFiles, load_checkpoint
from realsynth.training.interrupt import StepInterrupt
from realsynth.training.resume import choose_checkpoint
from realsynth.training.run_log import read_metrics

QUICK = ("TEST.EVAL_PERIOD=0", "SOLVER.CHECKPOINT_PERIOD=100")


def _cli(run: Path, demo_root: Path, *overrides: str) -> list[str]:
    """``realsynth train`` arguments for a tiny run on ``demo_root`` into ``run``."""
    return ["train", *TINY, f"DATASETS.DEMO.ROOT={demo_root}", f"OUTPUT_DIR={run}", *overrides]


def _line(err: str, start: str) -> str:
    """The one line of stderr that starts with ``start`` (and no traceback)."""
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith(start)]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory, demo_root) -> Path:
    """A finished two-step run (copy it before changing it)."""
    run = tmp_path_factory.mktemp("two-steps") / "run"
    assert main(_cli(run, demo_root, "SOLVER.MAX_ITER=2", *QUICK)) == 0
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns(".lock"))
    return target


def test_a_full_disk_keeps_the_checkpoint_that_exists_and_says_so(
    tmp_path, demo_root, monkeypatch, capsys
):
    real_save = torch.save

    def disk_full_at_step_4(obj, handle, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("run_state", {}).get("step") == 4:
            handle.write(b"\0" * 4096)  # part of the file, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_4)
    run = tmp_path / "run"
    common = ("SOLVER.MAX_ITER=6", "SOLVER.CHECKPOINT_PERIOD=2", "TEST.EVAL_PERIOD=0")
    assert main(_cli(run, demo_root, *common)) == 2
    line = _line(capsys.readouterr().err, "realsynth: error:")
    ckpts = run / "checkpoints"
    assert line == (
        f"realsynth: error: stopped at step 5 (cannot write the checkpoint "
        f"{ckpts / 'step_00000004.pt'}: no space left on device); the last checkpoint (step 2) "
        f"is kept; free space on the disk of {run}, then continue with "
        f"`realsynth train --resume {run}`"
    )
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.pt", "step_00000002.pt"]  # no .tmp
    assert load_checkpoint(ckpts / "last.pt", required=RESUME_KEYS)["run_state"]["step"] == 2

    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "realsynth: resuming from checkpoints/last.pt (step 2, the newest checkpoint)" in out
    assert [r["step"] for r in train_records(run)] == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(run)["run_state"]["step"] == 6


class _FullDisk:
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def test_torch_failing_on_a_full_disk_is_named_and_leaves_the_folder_as_it_was(
    tmp_path, monkeypatch
):
    from realsynth.training import checkpoint

    files = CheckpointFiles(tmp_path, keep=1)
    files.write(1, {"step": 1})
    real_writer = checkpoint._writer

    def full_after_1000_bytes(contents):
        write = real_writer(contents)
        return lambda handle: write(_FullDisk(handle, 1000))

    monkeypatch.setattr(checkpoint, "_writer", full_after_1000_bytes)
    # torch says "[enforce fail at inline_container.cc] unexpected pos"; the OSError is behind it.
    with pytest.raises(checkpoint.CheckpointWriteError) as info:
        files.write(2, {"step": 2, "weights": torch.zeros(10_000)})
    assert info.value.disk_full
    assert str(info.value) == (
        f"cannot write the checkpoint {files.step_path(2)}: no space left on device"
    )
    assert sorted(p.name for p in files.path.iterdir()) == ["last.pt", "step_00000001.pt"]
    assert torch.load(files.last)["step"] == 1


def test_the_first_sigterm_is_a_request_a_second_stops_at_once():
    with StepInterrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.should_stop(torch.device("cpu"))
        assert (interrupt.signal_name, interrupt.signum) == ("SIGTERM", signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with StepInterrupt() as interrupt:
        interrupt.at_once()  # nothing left to protect: the first signal stops at once
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def _wait_for_a_train_record(proc: subprocess.Popen, metrics: Path) -> int:
    """The step of the first train record the run logs (waits for it)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists():
            steps = [r["step"] for r in read_metrics(metrics.parent) if r["kind"] == "train"]
            if steps:
                return steps[-1]
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no train record in {metrics} (exit {proc.poll()})")


def test_sigterm_finishes_the_step_saves_it_and_exits_143(tmp_path, demo_root, capsys):
    run = tmp_path / "run"
    # No periodic checkpoint: every saved step is the one SIGTERM stopped after.
    args = _cli(run, demo_root, "SOLVER.MAX_ITER=20", "SOLVER.LOG_PERIOD=1", *QUICK)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stderr.txt", "w") as stderr:  # a file: a full pipe would block it
        proc = subprocess.Popen(
            [sys.executable, "-m", "realsynth", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        logged = _wait_for_a_train_record(proc, run / "metrics.jsonl")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=240)
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 143, err
    line = _line(err, "realsynth: stopped")
    found = re.fullmatch(
        r"realsynth: stopped at step (\d+) \(terminated by SIGTERM\); saved the checkpoint of "
        rf"step (\d+); continue with `realsynth train --resume {re.escape(str(run))}`",
        line,
    )
    assert found, line
    saved = int(found.group(2))
    assert int(found.group(1)) == saved + 1 and logged <= saved < 20
    assert load_checkpoint(run)["run_state"]["step"] == saved
    assert [p.name for p in (run / "checkpoints").glob("step_*")] == [f"step_{saved:08d}.pt"]

    assert main(["train", "--resume", str(run)]) == 0
    assert [r["step"] for r in train_records(run)] == list(range(1, 21))


def test_ctrl_c_in_the_final_evaluation_stops_it_and_keeps_the_trained_steps(
    tmp_path, demo_root, monkeypatch, capsys
):
    from realsynth.training import loop

    evaluate = loop.evaluate_sources

    def ctrl_c_then_evaluate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_sources", ctrl_c_then_evaluate)
    run = tmp_path / "run"
    assert main(_cli(run, demo_root, "SOLVER.MAX_ITER=3", *QUICK)) == 130
    line = _line(capsys.readouterr().err, "realsynth:")
    assert line == (
        "realsynth: stopped during the final evaluation (interrupted); all 3 steps are trained "
        f"and saved in {run / 'checkpoints' / 'last.pt'}: evaluate them with `realsynth eval "
        f"{run}`, or `realsynth train --resume {run}` redoes only the final evaluation"
    )
    assert load_checkpoint(run, required=RESUME_KEYS)["run_state"]["step"] == 3
    assert not (run / "eval.json").exists()
    assert [r["kind"] for r in read_metrics(run)] == ["train"] * 3

    monkeypatch.setattr(loop, "evaluate_sources", evaluate)
    assert main(["eval", str(run)]) == 0
    assert (run / "eval_last.json").exists()
    assert main(["train", "--resume", str(run)]) == 0
    records = read_metrics(run)
    assert [(r["kind"], r["step"]) for r in records] == [
        *(("train", s) for s in (1, 2, 3)),
        ("eval", 3),
    ]
    assert (run / "eval.json").exists()


def _checkpoint(path: Path, step: int) -> None:
    contents = {key: {} for key in RESUME_KEYS}
    torch.save({**contents, "version": 1, "run_state": {"step": step}}, path)


def test_resume_says_which_checkpoint_it_restores_and_why(tmp_path):
    files = CheckpointFiles(tmp_path, keep=2)
    files.path.mkdir()
    _checkpoint(files.step_path(4), 4)
    _checkpoint(files.step_path(6), 6)
    shutil.copyfile(files.step_path(6), files.last)
    _checkpoint(files.best, 2)
    described = choose_checkpoint(files).describe(tmp_path)
    assert described == "resuming from checkpoints/last.pt (step 6, the newest checkpoint)"

    files.last.write_bytes(b"truncated")
    files.step_path(6).write_bytes(b"")
    files.step_path(4).unlink()
    described = choose_checkpoint(files).describe(tmp_path)
    assert re.fullmatch(
        r"resuming from checkpoints/best\.pt \(step 2; last\.pt is unreadable \(.+\); "
        r"step_00000006\.pt is unreadable \(.+\)\)",
        described,
    ), described

    files.last.unlink()
    files.step_path(6).unlink()
    described = choose_checkpoint(files).describe(tmp_path)
    assert described == (
        "resuming from checkpoints/best.pt (step 2, the only checkpoint: there is no last.pt "
        "and no step checkpoint)"
    )


def test_resume_refuses_a_config_that_changes_data_model_or_optimizer(
    tmp_path, demo_root, two_steps, capsys
):
    run = _copy(two_steps, tmp_path)
    saved = (run / "config.yaml").read_text()
    ratio = "DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO"
    changes = [f"{ratio}=0.5", "MODEL.D_MODEL=64", "SOLVER.BASE_LR=0.01"]
    for change in changes:
        assert main(["train", "--resume", str(run), change]) == 2
        line = _line(capsys.readouterr().err, "realsynth: error:")
        assert f"this command changes {change.split('=')[0]} (" in line
    assert main(["train", "--resume", str(run), *changes, "SOLVER.MAX_ITER=3"]) == 2
    line = _line(capsys.readouterr().err, "realsynth: error:")
    assert line.startswith(
        f"realsynth: error: --resume {run}: this command changes {ratio} (0.7 -> 0.5), "
        "MODEL.D_MODEL (32 -> 64), SOLVER.BASE_LR (0.001 -> 0.01), which would change the run's "
        "data, model or optimizer; resume with the run's own settings"
    )
    assert "MAX_ITER" not in line.split(";")[0]
    assert (run / "config.yaml").read_text() == saved  # not rewritten

    # How long it trains, evaluates, logs and saves may change.
    more = ["SOLVER.MAX_ITER=3", "TEST.EVAL_PERIOD=3", "SOLVER.LOG_PERIOD=1", "TEST.TOP_K=150"]
    assert main(["train", "--resume", str(run), *more]) == 0
    assert [r["step"] for r in train_records(run)] == [1, 2, 3]
    assert "MAX_ITER: 3" in (run / "config.yaml").read_text()


def test_resume_refuses_a_changed_source_path(tmp_path, demo_root, capsys):
    files = {
        kind: (demo_root / kind / "train" / "annotations.json", demo_root / kind / "val")
        for kind in ("real", "synthetic")
    }
    sources = ", ".join(
        f"{{NAME: {kind}, TYPE: {kind}, PATH: {train}, VAL_PATH: {val / 'annotations.json'}}}"
        for kind, (train, val) in files.items()
    )
    cfg = tiny_config(tmp_path, f"DATASETS.SOURCES=[{sources}]", demo_root=demo_root)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(cfg))
    other = files["synthetic"][0]
    assert main(["train", "--resume", str(run), f"DATASETS.SOURCES[0].PATH={other}"]) == 2
    line = _line(capsys.readouterr().err, "realsynth: error:")
    assert f"this command changes DATASETS.SOURCES[0].PATH ({files['real'][0]} -> {other})," in line
    assert not (run / "checkpoints").exists()


def test_a_run_of_an_older_version_resumes_when_new_keys_keep_their_defaults(
    tmp_path, two_steps, capsys
):
    # An older realsynth wrote config.yaml without the keys added since (here the adaptive
    # score and a source key): at their defaults they change nothing, set otherwise they do.
    run = _copy(two_steps, tmp_path)
    saved = (run / "config.yaml").read_text()
    older = "\n".join(line for line in saved.splitlines() if "SCORE:" not in line) + "\n"
    assert older != saved
    (run / "config.yaml").write_text(older)
    score = "DATASETS.MULTI_DATASET.ADAPTIVE.SCORE"
    assert main(["train", "--resume", str(run), f"{score}=projection"]) == 2
    line = _line(capsys.readouterr().err, "realsynth: error:")
    assert f"this command changes {score} (cosine -> projection)" in line
    assert main(["train", "--resume", str(run), "SOLVER.MAX_ITER=3"]) == 0
    assert [r["step"] for r in train_records(run)] == [1, 2, 3]


def test_eval_of_a_checkpoint_of_another_model_is_one_line(two_steps, capsys):
    assert main(["eval", str(two_steps), "MODEL.D_MODEL=16"]) == 2
    line = _line(capsys.readouterr().err, "realsynth: error:")
    found = re.fullmatch(
        rf"realsynth: error: {re.escape(str(two_steps / 'checkpoints' / 'last.pt'))} does not fit "
        r"the model: (\d+) of (\d+) tensors differ in shape, first input_proj\.weight "
        r"\(checkpoint \[32, 32, 1, 1\], model \[16, 32, 1, 1\]\), .+; evaluate it with the model "
        r"it was trained as \(leave out the MODEL\.\* overrides\)",
        line,
    )
    assert found, line
    assert 0 < int(found.group(1)) < int(found.group(2))


def test_resume_from_a_checkpoint_of_another_model_is_one_line(
    tmp_path, demo_root, two_steps, capsys
):
    run = _copy(two_steps, tmp_path)
    smaller = tiny_config(tmp_path / "other", "MODEL.D_MODEL=16", demo_root=demo_root)
    model, _ = build_model.build_model_and_criterion(
        smaller, build.build_data(smaller), torch.device("cpu")
    )
    last = run / "checkpoints" / "last.pt"
    contents = load_checkpoint(last, required=RESUME_KEYS)
    last.unlink()  # a hard link of the step file: write a file of its own
    torch.save({**contents, "model": model.state_dict()}, last)
    assert main(["train", "--resume", str(run), "SOLVER.MAX_ITER=3"]) == 2
    line = _line(capsys.readouterr().err, "realsynth: error:")
    assert line.startswith(
        f"realsynth: error: {last} does not fit the model: 65 of 110 tensors differ in shape, "
        "first input_proj.weight (checkpoint [16, 32, 1, 1], model [32, 32, 1, 1]), "
    )
    assert line.endswith(
        f"it was not written by the model {run / 'config.yaml'} describes; resume from the run's "
        "own checkpoints, or train it anew with --overwrite"
    )
    assert [r["step"] for r in train_records(run)] == [1, 2]  # nothing was trained or logged
