"""``realsynth gap``: the report of a finished run, and the constructed same-data case."""

from __future__ import annotations

import json

import pytest
from tiny_runs import TINY, tiny_config

from realsynth.diagnostics.gap_report import gap_report
from realsynth.training.train import train

STEPS = ("SOLVER.MAX_ITER=3", "TEST.EVAL_PERIOD=0")


def test_a_run_with_gap_report_writes_the_report(tmp_path, demo_root, capsys):
    from realsynth.cli import main

    where = [f"DATASETS.DEMO.ROOT={demo_root}", f"OUTPUT_DIR={tmp_path / 'run'}"]
    assert main(["train", *TINY, *where, *STEPS, "TEST.GAP_REPORT=true"]) == 0
    run = tmp_path / "run"
    report = json.loads((run / "gap.json").read_text())
    assert report["real"] == "real" and set(report["sources"]) == {"real", "synthetic"}
    synthetic = report["sources"]["synthetic"]
    assert set(synthetic["js_divergence"]) >= {"classes", "predicates", "size", "aspect"}
    assert all(0 <= v <= 1 for v in synthetic["js_divergence"].values())
    clf = synthetic["domain_classifier"]
    assert 0 <= clf["low"] <= clf["auc"] <= clf["high"] <= 1
    assert synthetic["frechet_distance"] >= 0
    assert set(report["recall"]) == {"real", "synthetic"}
    assert all(len(v) == len(report["predicates"]) for v in report["recall"].values())
    text = (run / "gap.md").read_text()
    assert "| synthetic |" in text and "domain classifier AUC" in text
    for name in ("gap_labels.png", "gap_boxes.png", "gap_recall.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"
    assert main(["gap", str(run), "--feature-images", "6"]) == 0
    assert "# Domain gap: each source against `real`" in capsys.readouterr().out


def test_a_synthetic_source_that_is_the_real_data_shows_no_gap(tmp_path, demo_root):
    real = demo_root / "real"
    files = (
        f"PATH: {real}/train/annotations.json, VAL_PATH: {real}/val/annotations.json, "
        "FORMAT: relcoco"
    )
    entries = [f"{{NAME: real, TYPE: real, {files}}}", f"{{NAME: copy, TYPE: synthetic, {files}}}"]
    sources = f"DATASETS.SOURCES=[{', '.join(entries)}]"
    cfg = tiny_config(tmp_path, *STEPS, sources, demo_root=demo_root)
    train(cfg)
    report = gap_report(tmp_path / "run")
    copy = report["sources"]["copy"]
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in copy["js_divergence"].values())
    assert copy["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert copy["domain_classifier"]["low"] <= 0.5 <= copy["domain_classifier"]["high"]


def test_gap_on_a_run_trained_on_one_source_says_so_in_one_line(tmp_path, demo_root, capsys):
    from realsynth.cli import main

    one_source = ("SOLVER.MAX_ITER=1", "TEST.EVAL_PERIOD=0", "DATASETS.MULTI_DATASET.ENABLED=false")
    cfg = tiny_config(tmp_path, *one_source, demo_root=demo_root)
    train(cfg)
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["gap", str(run), "--feature-images", "6"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err == (
        f"realsynth: error: {run}: the run trained on one source only ('real'), so there is no "
        "second (synthetic) source to compare with; `realsynth gap` needs a run trained on a "
        "real and a synthetic source\n"
    )
    assert not (run / "gap.json").exists() and not (run / "gap.md").exists()
