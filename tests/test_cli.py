"""The ``realsynth`` command line: exit codes, messages, agreement with the library."""

from __future__ import annotations

import json

from engine_helpers import TINY, tiny_config

from realsynth.cli import main
from realsynth.engine.train import train


def test_config_show_prints_the_resolved_config(capsys):
    assert main(["config", "show", "DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO=0.5"]) == 0
    out = capsys.readouterr().out
    assert "REAL_SAMPLING_RATIO: 0.5" in out
    assert "SYNTHETIC_LOSS_WEIGHT: 0.5" in out


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
    assert any("relationships[0]" in e["location"] for e in errors)


def test_eval_reproduces_the_trainers_final_evaluation(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "SOLVER.MAX_ITER=2", "TEST.EVAL_PERIOD=100")
    results = train(cfg)
    run = tmp_path / "run"
    (run / "eval.json").unlink()
    assert main(["eval", str(run)]) == 0
    assert json.loads((run / "eval.json").read_text()) == results
    assert "R@50" in capsys.readouterr().out


def test_tiny_overrides_are_valid_config_keys():
    # The engine tests rely on these keys; a rename must fail here, not silently.
    assert main(["config", "show", *TINY]) == 0
