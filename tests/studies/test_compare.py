"""``realsynth compare`` end to end on a tiny demo: runs, resuming, the report."""

from __future__ import annotations

import json
import os
import shlex
import signal

import pytest
from tiny_runs import TINY, AtStep, tiny_config, train_records

from realsynth.cli import main
from realsynth.config import ConfigError, load_config, to_yaml
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
SYNTHETIC_WEIGHT_1 = "DATASETS.MULTI_DATASET.SYNTHETIC_LOSS_WEIGHT=1.0"


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


# One seed of the mix (the reference) and the variants under test, two steps each.
SMALL = (
    "SOLVER.MAX_ITER=2",
    "TEST.EVAL_PERIOD=0",
    "COMPARE.SEEDS=1",
    "COMPARE.BUILTIN=[mix]",
    "COMPARE.REFERENCE=mix",
    "COMPARE.BOOTSTRAP=20",
)


def _cli_args(tmp_path, demo_root, *overrides):
    """``realsynth compare`` arguments for a tiny comparison in ``tmp_path / 'run'``."""
    return [
        "compare",
        *TINY,
        f"DATASETS.DEMO.ROOT={demo_root}",
        f"OUTPUT_DIR={tmp_path / 'run'}",
        *SMALL,
        *overrides,
    ]


def _variant(name, *overrides):
    return f"COMPARE.VARIANTS=[{{NAME: {name}, OVERRIDES: {list(overrides)!r}}}]"


def test_every_variant_is_built_and_checked_before_anything_trains(tmp_path, demo_root):
    for overrides, message in (
        (["SOLVER.MAX_ITERS=2"], r"variant 'typo': .*unknown key SOLVER\.MAX_ITERS"),
        (
            [f"DATASETS.SOURCES=[{{NAME: r, PATH: {tmp_path / 'nowhere.json'}}}]"],
            r"variant 'elsewhere': DATASETS\.SOURCES\[0\]\.PATH: .*nowhere\.json' does not exist",
        ),
    ):
        name = "typo" if "MAX_ITERS" in overrides[0] else "elsewhere"
        cfg = tiny_config(
            tmp_path,
            *SMALL,
            "COMPARE.VARIANTS=[{NAME: fine, OVERRIDES: []}, "
            f"{{NAME: {name}, OVERRIDES: {overrides!r}}}]",
            demo_root=demo_root,
        )
        with pytest.raises(ConfigError, match=message):
            compare(cfg)
        assert not (tmp_path / "run").exists()  # not one step of mix or fine was trained


@pytest.mark.parametrize("name", ["../escape", "a/b", "9lives", "-x", "", "x.y"])
def test_a_variant_name_that_is_not_a_plain_identifier_is_refused(tmp_path, demo_root, name):
    cfg = tiny_config(
        tmp_path,
        *SMALL,
        f"COMPARE.VARIANTS=[{{NAME: fine_1-b, OVERRIDES: []}}, {{NAME: '{name}'}}]",
        demo_root=demo_root,
    )
    with pytest.raises(ConfigError, match=r"^COMPARE\.VARIANTS\[1\]\.NAME: .* plain name") as info:
        compare(cfg)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "escape").exists()


def test_a_failing_variant_is_reported_the_others_compared_and_retried_alone(
    tmp_path, demo_root, capsys
):
    diverges = ("SOLVER.BASE_LR=1e12", "SOLVER.WARMUP_ITERS=0", "SOLVER.CLIP_GRAD_NORM=0")
    args = _cli_args(tmp_path, demo_root, _variant("nan", *diverges))
    assert main(args) == 1
    out = tmp_path / "run"
    printed = capsys.readouterr().out
    report = json.loads((out / "compare.json").read_text())
    assert [(f["variant"], f["seed"], f["run"]) for f in report["failed"]] == [
        ("nan", 0, "nan/seed0")
    ]
    error = report["failed"][0]["error"]
    assert error.startswith("stopped at step 2 (ValueError") and "\n" not in error
    assert "--resume" not in error  # the same compare command retries it
    assert set(report["variants"]) == {"mix"} and report["differences"] == {}
    assert f"- nan/seed0 (seed 0): {error}" in printed
    row = next(line for line in printed.splitlines() if line.startswith("|") and "nan" in line)
    assert "failed (1 of 1 seeds)" in row and "not compared (failed): nan" in printed
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    # Again, with the failed variant as the reference: mix is reused, only nan/seed0 retried.
    mix_log = out / "mix" / "seed0" / "metrics.jsonl"
    stamp = mix_log.stat().st_mtime_ns
    assert main([*args, "COMPARE.REFERENCE=nan"]) == 1
    printed = capsys.readouterr().out
    retries = [line for line in printed.splitlines() if "retrying" in line]
    assert retries == ["realsynth compare: retrying 1 run(s) that failed before: nan/seed0"]
    assert mix_log.stat().st_mtime_ns == stamp
    report = json.loads((out / "compare.json").read_text())
    assert report["differences"] == {} and report["verdicts"] == []
    assert report["no_differences"] == "the reference nan failed: no paired differences"
    assert "- the reference nan failed: no paired differences" in printed
    # Without the failing variant every run finished: exit 0, nothing retried.
    assert main([*args, "COMPARE.VARIANTS=[]"]) == 0
    assert "retrying" not in capsys.readouterr().out


def test_the_report_gives_each_variants_images_seen_and_says_when_budgets_differ(
    tmp_path, demo_root, capsys
):
    cfg = tiny_config(
        tmp_path,
        *_cli_args(tmp_path, demo_root, _variant("longer", "SOLVER.MAX_ITER=3"))[1:],
        demo_root=demo_root,
    )
    report = compare(cfg)
    assert report["budgets"] == {
        "mix": {"steps": 2, "global_batch": 8, "images_seen": 16},
        "longer": {"steps": 3, "global_batch": 8, "images_seen": 24},
    }
    assert report["same_budget"] is False
    printed = capsys.readouterr().out
    assert "same training budget" not in printed.lower()
    assert "Training budgets DIFFER between variants" in printed
    assert "mix: 16 (2 steps x 8); longer: 24 (3 steps x 8)" in printed
    ours = printed.split("R@50 on the val sets")[-1].splitlines()
    table = [line.split("|")[1:3] for line in ours if line.startswith("| ")]
    assert [[c.strip() for c in row] for row in table] == [
        ["variant", "images seen"],
        ["mix", "16"],
        ["longer", "24"],
    ]
    same = compare(load_config(None, ["COMPARE.VARIANTS=[]"], base_yaml=to_yaml(cfg)))
    assert same["same_budget"] is True and set(same["budgets"]) == {"mix"}
    assert "Same training budget for every variant: 2 steps x 8 images" in capsys.readouterr().out


def test_ctrl_c_exits_130_with_one_line_and_the_same_command_resumes(
    tmp_path, demo_root, monkeypatch, capsys
):
    import realsynth.studies.compare as compare_module

    args = _cli_args(
        tmp_path, demo_root, "SOLVER.MAX_ITER=3", _variant("unweighted", SYNTHETIC_WEIGHT_1)
    )
    train_run = compare_module.run_or_resume

    def ctrl_c_in_unweighted(cfg, callbacks=()):
        if cfg.OUTPUT_DIR.endswith("unweighted/seed0"):
            callbacks = [*callbacks, AtStep(2, lambda: os.kill(os.getpid(), signal.SIGINT))]
        return train_run(cfg, callbacks)

    monkeypatch.setattr(compare_module, "run_or_resume", ctrl_c_in_unweighted)
    assert main(args) == 130
    lines = [x for x in capsys.readouterr().err.split("\n") if "realsynth" in x]
    assert len(lines) == 1
    assert lines[0].startswith(
        "realsynth: interrupted: 1 finished run(s) kept; unweighted/seed0 stopped at its "
        "checkpoint of step 2 and resumes from there when you run the same command again: "
        "realsynth compare "
    )
    assert lines[0].endswith(shlex.join(args[1:]))
    out = tmp_path / "run"
    assert not (out / "compare.json").exists()
    assert main(args) == 0  # the same command: unweighted/seed0 goes on at step 3
    assert [r["step"] for r in train_records(out / "unweighted" / "seed0")] == [1, 2, 3]
    assert [r["step"] for r in train_records(out / "mix" / "seed0")] == [1, 2, 3]
    assert set(json.loads((out / "compare.json").read_text())["variants"]) == {"mix", "unweighted"}
