"""``realsynth compare`` end to end on a tiny demo: runs, resuming, the report."""

from __future__ import annotations

import json
import os
import signal

import pytest
from tiny_runs import AtStep, tiny_config, train_records

from realsynth.config import ConfigError
from realsynth.studies.compare import compare, compare_variants, run_config
from realsynth.training.train import TrainingInterrupted, train

COMPARE = (
    "SOLVER.MAX_ITER=3",
    "TEST.EVAL_PERIOD=0",
    "COMPARE.SEEDS=2",
    "COMPARE.BUILTIN=[real_only,mix]",
    "COMPARE.VARIANTS=[{NAME: unweighted, "
    "OVERRIDES: ['DATASETS.MULTI_DATASET.SYNTHETIC_LOSS_WEIGHT=1.0']}]",
    "COMPARE.BOOTSTRAP=50",
)


def test_compare_runs_every_variant_and_seed_resumes_and_reports(tmp_path):
    cfg = tiny_config(tmp_path, *COMPARE)
    # A comparison killed in the middle of one run: mix, seed 1, stopped after its step 2.
    interrupted = run_config(cfg, "mix", [], 1)
    with pytest.raises(TrainingInterrupted):
        train(interrupted, callbacks=[AtStep(2, lambda: os.kill(os.getpid(), signal.SIGINT))])
    report = compare(cfg)
    out = tmp_path / "run"
    for name in ("real_only", "mix", "unweighted"):
        for k in (0, 1):
            run = out / name / f"seed{k}"
            assert [r["step"] for r in train_records(run)] == [1, 2, 3]
            assert f"SEED: {k}" in (run / "config.yaml").read_text()
    assert set(report["variants"]) == {"real_only", "mix", "unweighted"}
    assert set(report["differences"]) == {"mix", "unweighted"}
    for per_source in report["variants"].values():
        assert set(per_source) == {"real", "synthetic"}
        for entry in per_source.values():
            assert len(entry["per_seed"]) == 2 and entry["low"] <= entry["value"] <= entry["high"]
    assert len(report["verdicts"]) == 4
    assert json.loads((out / "compare.json").read_text()) == json.loads(json.dumps(report))
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    # Again: nothing is trained, the same report comes back.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.jsonl")}
    assert compare(cfg) == report
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.jsonl")} == stamps


def test_compare_on_the_test_split_evaluates_each_run_once(tmp_path):
    cfg = tiny_config(tmp_path, *COMPARE, "COMPARE.SPLIT=test", "COMPARE.VARIANTS=[]")
    report = compare(cfg)
    assert report["split"] == "test"
    assert set(report["variants"]["mix"]) == {"real"}  # only the real source has a test split
    assert (tmp_path / "run" / "mix" / "seed0" / "eval_test.json").exists()


def test_builtin_adaptive_starts_from_the_mix_and_the_mix_stays_fixed(tmp_path):
    adaptive_config = tiny_config(tmp_path, "DATASETS.MULTI_DATASET.ADAPTIVE.ENABLED=true")
    variants = compare_variants(
        tiny_config(tmp_path, "COMPARE.BUILTIN=[real_only,naive,mix,adaptive]")
    )
    adaptive = run_config(adaptive_config, "adaptive", variants["adaptive"], 0)
    mix = run_config(adaptive_config, "mix", variants["mix"], 0)
    naive = run_config(adaptive_config, "naive", variants["naive"], 0)
    assert adaptive.DATASETS.MULTI_DATASET.ADAPTIVE.ENABLED
    assert not mix.DATASETS.MULTI_DATASET.ADAPTIVE.ENABLED
    assert not naive.DATASETS.MULTI_DATASET.ADAPTIVE.ENABLED
    assert adaptive.DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO == 0.7  # the mix's start


def test_variant_names_and_reference_are_checked(tmp_path):
    clash = tiny_config(tmp_path, "COMPARE.VARIANTS=[{NAME: mix, OVERRIDES: []}]")
    with pytest.raises(ConfigError, match=r"COMPARE.VARIANTS\[0\].NAME: 'mix' is already"):
        compare_variants(clash)
    missing = tiny_config(tmp_path, "COMPARE.BUILTIN=[mix]")
    with pytest.raises(ConfigError, match="COMPARE.REFERENCE='real_only' is not one of"):
        compare_variants(missing)
    bad = tiny_config(tmp_path, "COMPARE.VARIANTS=[{NAME: x, OVERRIDES: ['SOLVER.MAX_ITERS=2']}]")
    with pytest.raises(ConfigError, match="variant 'x'.*unknown key SOLVER.MAX_ITERS"):
        run_config(bad, "x", list(bad.COMPARE.VARIANTS[0].OVERRIDES), 0)
