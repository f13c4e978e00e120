"""The ``realsynth`` command line: exit codes, messages, agreement with the library."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tiny_runs import TINY, tiny_config

from realsynth.cli import main
from realsynth.data.formats.relcoco_rules import REQUIRED_KEYS
from realsynth.training.train import train


def test_config_show_prints_the_resolved_config(capsys):
    assert main(["config", "show", "DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO=0.5"]) == 0
    out = capsys.readouterr().out
    assert "REAL_SAMPLING_RATIO: 0.5" in out
    assert "SYNTHETIC_LOSS_WEIGHT: 0.5" in out


def test_overrides_may_follow_options_and_other_stray_arguments_are_refused(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("SOLVER:\n  MAX_ITER: 7\n")
    argv = ["config", "show", "SEED=3", "--config-file", str(config), "SOLVER.BASE_LR=0.5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "SEED: 3" in out and "BASE_LR: 0.5" in out and "MAX_ITER: 7" in out
    with pytest.raises(SystemExit) as exc:
        main(["config", "show", "SEED=3", "--config-file", str(config), "--fast"])
    assert exc.value.code == 2 and "unrecognized arguments: --fast" in capsys.readouterr().err


def test_bad_setting_is_a_clear_error_with_exit_status_2(capsys):
    assert main(["config", "show", "SOLVER.BASE_LRR=0.1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "realsynth: error: command line: unknown key SOLVER.BASE_LRR (did you mean SOLVER.BASE_LR?)"
    )


def test_resume_without_a_run_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "no config.yaml in that run folder" in capsys.readouterr().err


def test_data_demo_then_check_is_clean_and_a_broken_file_exits_1(tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "--real-train",
        "4",
        "--real-val",
        "2",
        "--synthetic-train",
        "4",
        "--synthetic-val",
        "2",
    ]
    assert main(["data", "demo", str(out), *args]) == 0
    ann = out / "real" / "train" / "annotations.json"
    report = tmp_path / "report.json"
    assert main(["data", "check", str(ann), "--json", str(report)]) == 0
    summary = json.loads(report.read_text())
    assert summary["errors"] == []
    data = json.loads(ann.read_text())
    data["relationships"][0]["subject_id"] = 10**9
    ann.write_text(json.dumps(data))
    assert main(["data", "check", str(ann), "--json", str(report)]) == 1
    errors = json.loads(report.read_text())["errors"]
    assert [(e["location"], e["message"]) for e in errors] == [
        ("relationships[0]", "subject_id 1000000000 not an annotation id")
    ]


def test_eval_reproduces_training_and_never_replaces_the_runs_eval_json(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "SOLVER.MAX_ITER=2", "TEST.EVAL_PERIOD=100")
    results = train(cfg)
    run = tmp_path / "run"
    own = (run / "eval.json").read_text()
    assert main(["eval", str(run)]) == 0
    assert json.loads((run / "eval_last.json").read_text()) == results
    assert "R@50 %" in capsys.readouterr().out
    # Another config's validation data: its own file, named after the config.
    other = tmp_path / "other.yaml"
    demo = dict(o.removeprefix("DATASETS.DEMO.").split("=") for o in TINY if "DEMO." in o)
    demo["ROOT"] = str(tmp_path / "demo")
    other.write_text("DATASETS:\n  DEMO:\n" + "".join(f"    {k}: {v}\n" for k, v in demo.items()))
    assert main(["eval", str(run / "checkpoints" / "best.pt"), "--data", str(other)]) == 0
    assert json.loads((run / "eval_best_other.json").read_text()) == results
    assert main(["eval", str(run), "--output", str(tmp_path / "mine.json")]) == 0
    assert json.loads((tmp_path / "mine.json").read_text()) == results
    assert (run / "eval.json").read_text() == own


def test_eval_into_a_closed_pipe_exits_quietly(tmp_path):
    cfg = tiny_config(tmp_path, "SOLVER.MAX_ITER=1", "TEST.EVAL_PERIOD=100")
    train(cfg)
    # The reader is gone before eval writes its table (as `realsynth eval RUN | head -0`).
    proc = subprocess.Popen(
        [sys.executable, "-m", "realsynth", "eval", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_data_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "real" / "train").mkdir(parents=True)
    (out / "real" / "train" / "photo.jpg").write_bytes(b"precious")
    sizes = [
        "--real-train",
        "2",
        "--real-val",
        "1",
        "--synthetic-train",
        "2",
        "--synthetic-val",
        "1",
    ]
    assert main(["data", "demo", str(out), *sizes]) == 2
    err = capsys.readouterr().err
    assert "was not made by `realsynth data demo`" in err and "--force" in err
    assert (out / "real" / "train" / "photo.jpg").read_bytes() == b"precious"
    fresh = tmp_path / "fresh"
    assert main(["data", "demo", str(fresh), *sizes]) == 0
    assert main(["data", "demo", str(fresh), *sizes, "--seed", "1"]) == 0  # its own: replaced
    assert main(["data", "demo", str(out), *sizes, "--force"]) == 0
    assert not (out / "real" / "train" / "photo.jpg").exists()
    assert len(list((out / "real" / "train" / "images").iterdir())) == 2


def test_data_check_exit_codes_and_messages(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nowhere.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path)]) == 2
    assert "name it with --format relcoco or --format vg150" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({k: [] for k in REQUIRED_KEYS}))
    assert main(["data", "check", str(empty)]) == 1
    assert "[no_images] x1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "check", "--help"])
    assert "0 clean (warnings allowed), 1 problems found, 2 cannot run" in " ".join(
        capsys.readouterr().out.split()
    )


def test_tiny_overrides_are_valid_config_keys():
    # The engine tests rely on these keys; a rename must fail here, not silently.
    assert main(["config", "show", *TINY]) == 0
