"""Errors before and during a run: start-up validation, what is kept, what is said, and where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_runs import assert_same_records, tiny_config, train_records

from realsynth.cli import main
from realsynth.config import ConfigError
from realsynth.data.check import check_dataset
from realsynth.data.problems import DatasetProblems
from realsynth.training import build
from realsynth.training.checkpoint import load_checkpoint
from realsynth.training.train import TrainingFailed, train

COMMON = ("SOLVER.MAX_ITER=5", "SOLVER.CHECKPOINT_PERIOD=100", "TEST.EVAL_PERIOD=0")


@pytest.fixture()
def demo_root(tmp_path):
    """A fresh demo set per test: these tests break its files."""
    root = tmp_path / "demo"
    build.build_data(tiny_config(tmp_path / "setup", demo_root=root))
    return root


def _first_drawn_at(cfg, step: int) -> Path:
    """A real training image that the run draws for the first time at ``step``."""
    data = build.build_data(cfg)
    loader = build.build_train_loader(cfg, data)
    first: dict[int, int] = {}
    for b, row in enumerate(loader.batch_sampler.batches(0, len(loader.batch_sampler))):
        for g in row.tolist():
            first.setdefault(g, b + 1)
    for g, seen in sorted(first.items()):
        source, local = loader.dataset.source_of(g)
        if seen == step and data.names[source] == "real":
            return data.train[source].image_path(local)
    raise AssertionError(f"no real image first drawn at step {step}")


def test_an_image_that_breaks_at_step_3_keeps_step_2_and_resume_is_exact(tmp_path, demo_root):
    train(tiny_config(tmp_path / "a", *COMMON, demo_root=demo_root))
    reference = train_records(tmp_path / "a" / "run")

    cfg = tiny_config(tmp_path / "b", *COMMON, demo_root=demo_root)
    image = _first_drawn_at(cfg, 3)
    original = image.read_bytes()
    image.write_bytes(b"not a png any more")  # exists (passes the start-up check), cannot decode
    with pytest.raises(TrainingFailed) as info:
        train(cfg)
    message = str(info.value)
    assert message.startswith("stopped at step 3 (BadSampleError: source 'real': cannot read image")
    assert str(image) in message
    resume = f"`realsynth train --resume {tmp_path / 'b' / 'run'}`"
    assert f"saved the checkpoint of step 2; continue with {resume}" in message
    assert load_checkpoint(tmp_path / "b" / "run")["run_state"]["step"] == 2
    image.write_bytes(original)
    train(cfg, resume=True)
    assert_same_records(train_records(tmp_path / "b" / "run"), reference)


def test_a_broken_validation_image_at_the_first_evaluation_keeps_the_trained_steps(
    tmp_path, demo_root
):
    cfg = tiny_config(tmp_path, "SOLVER.MAX_ITER=6", "TEST.EVAL_PERIOD=3", demo_root=demo_root)
    (demo_root / "synthetic" / "val" / "images" / "000001.png").write_bytes(b"broken")
    with pytest.raises(
        TrainingFailed, match=r"stopped at step 4 .*000001\.png.*checkpoint of step 3"
    ):
        train(cfg)
    assert load_checkpoint(tmp_path / "run")["run_state"]["step"] == 3


def test_cli_error_line_is_on_its_own_line_after_the_progress_bar(tmp_path, demo_root, capsys):
    cfg = tiny_config(tmp_path, *COMMON, demo_root=demo_root)
    _first_drawn_at(cfg, 2).write_bytes(b"broken")
    overrides = [f"{k}={v}" for k, v in _flat_overrides(cfg)]
    assert main(["train", *overrides]) == 2
    err = capsys.readouterr().err
    assert "\nrealsynth: error: stopped at step 2 (BadSampleError" in err
    line = next(x for x in err.split("\n") if "realsynth: error" in x)
    assert line.startswith("realsynth: error") and "it/s" not in line


def _flat_overrides(cfg):
    """The few keys tiny_config sets, read back from the config (for a CLI run)."""
    keys = (
        "DATASETS.DEMO.ROOT",
        "DATASETS.DEMO.REAL_TRAIN",
        "DATASETS.DEMO.REAL_VAL",
        "DATASETS.DEMO.SYNTHETIC_TRAIN",
        "DATASETS.DEMO.SYNTHETIC_VAL",
        "DATASETS.DEMO.REAL_TEST",
        "OUTPUT_DIR",
        "MODEL.D_MODEL",
        "MODEL.NUM_QUERIES",
        "MODEL.ENC_LAYERS",
        "MODEL.DEC_LAYERS",
        "MODEL.DIM_FEEDFORWARD",
        "SOLVER.IMS_PER_BATCH",
        "SOLVER.MAX_ITER",
        "TEST.EVAL_PERIOD",
    )
    from omegaconf import OmegaConf

    return [(k, OmegaConf.select(cfg, k)) for k in keys] + [
        ("MODEL.BACKBONE.CHANNELS", "[8,16,32]")
    ]


def test_start_up_lists_missing_files_or_skips_and_names_them(tmp_path, demo_root):
    images = demo_root / "real" / "train" / "images"
    for k in range(7):
        (images / f"{k:06d}.png").unlink()
    with pytest.raises(DatasetProblems) as info:
        train(tiny_config(tmp_path / "a", *COMMON, demo_root=demo_root))
    lines = str(info.value).splitlines()
    assert "7 problem(s)" in lines[0] and "SKIP_BAD_SAMPLES" in lines[0]
    assert lines[1].strip() == "[missing_image] x7"
    assert len([x for x in lines if "image file not found" in x]) == 5  # the first five
    assert lines[-1].strip() == "... 2 more"
    assert not (tmp_path / "a" / "run" / "config.yaml").exists()  # nothing started

    cfg = tiny_config(
        tmp_path / "b", *COMMON, "DATALOADER.SKIP_BAD_SAMPLES=true", demo_root=demo_root
    )
    train(cfg)
    listed = json.loads((tmp_path / "b" / "run" / "skipped_samples.json").read_text())
    assert [e["file_name"] for e in listed["source 'real' (train)"]] == [
        f"{k:06d}.png" for k in range(7)
    ]
    assert {e["code"] for e in listed["source 'real' (train)"]} == {"missing_image"}


def test_boxes_at_the_wrong_scale_stop_training_exactly_where_data_check_points(
    tmp_path, demo_root
):
    ann = demo_root / "real" / "train" / "annotations.json"
    data = json.loads(ann.read_text())
    for a in data["annotations"]:
        a["bbox"] = [10 * v for v in a["bbox"]]  # every box ten times too big
    ann.write_text(json.dumps(data))
    report = check_dataset(ann)
    with pytest.raises(DatasetProblems) as info:
        train(tiny_config(tmp_path, *COMMON, demo_root=demo_root))
    found = info.value.findings.errors
    assert found and {p.code for p in found} == {"box_outside_image"}
    assert [(p.code, p.location) for p in found] == [(p.code, p.location) for p in report.errors]


def test_skipped_draws_are_reported_as_distinct_files(tmp_path, demo_root, capsys):
    cfg = tiny_config(
        tmp_path,
        "SOLVER.MAX_ITER=10",
        "TEST.EVAL_PERIOD=0",
        "DATALOADER.SKIP_BAD_SAMPLES=true",
        demo_root=demo_root,
    )
    broken = _first_drawn_at(cfg, 1)
    broken.write_bytes(b"broken")
    train(cfg)  # 10 steps cross two epochs: the broken file is drawn twice
    out = capsys.readouterr().out
    assert (
        "Skipped 2 draw(s) of 1 unreadable image file(s) (DATALOADER.SKIP_BAD_SAMPLES): "
        f"real/{broken.name}"
    ) in out


def _cli(tmp_path: Path, demo_root: Path, *overrides: str) -> list[str]:
    """``realsynth train`` arguments for a tiny run on ``demo_root`` into ``tmp_path/run``."""
    from tiny_runs import TINY

    return [
        "train",
        *TINY,
        *COMMON,
        f"DATASETS.DEMO.ROOT={demo_root}",
        f"OUTPUT_DIR={tmp_path / 'run'}",
        *overrides,
    ]


def _error_line(err: str) -> str:
    """The one ``realsynth: error:`` line of stderr (and no traceback)."""
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("realsynth: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _without_relationships(ann: Path) -> None:
    data = json.loads(ann.read_text())
    data["relationships"] = []
    ann.write_text(json.dumps(data))


def test_a_validation_source_without_relationships_is_refused_at_start_up(
    tmp_path, demo_root, capsys
):
    ann = demo_root / "real" / "val" / "annotations.json"
    _without_relationships(ann)
    assert main(_cli(tmp_path, demo_root)) == 2
    line = _error_line(capsys.readouterr().err)
    assert line == (
        f"realsynth: error: validation source 'real': {ann} has no relationships in its 6 "
        "image(s), so Recall@K cannot be computed on it (DATASETS.SOURCES real.VAL_PATH); give "
        "it a file with relationships (`realsynth data check` says what was left out)"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()  # no step was trained


def test_a_test_source_without_relationships_is_refused_before_evaluating(
    tmp_path, demo_root, capsys
):
    train(tiny_config(tmp_path, *COMMON, "SOLVER.MAX_ITER=1", demo_root=demo_root))
    ann = demo_root / "real" / "test" / "annotations.json"
    _without_relationships(ann)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--split", "test"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"test source 'real': {ann} has no relationships in its 6 image(s)" in line
    assert "real.TEST_PATH" in line
    assert not list((tmp_path / "run").glob("eval_*test*"))


def test_a_training_source_without_relationships_trains_with_one_warning(
    tmp_path, demo_root, capsys
):
    from realsynth.training import source_checks

    ann = demo_root / "synthetic" / "train" / "annotations.json"
    _without_relationships(ann)
    source_checks._WARNED_WITHOUT_RELATIONSHIPS.clear()
    assert main(_cli(tmp_path, demo_root, "SOLVER.MAX_ITER=1")) == 0
    build.build_data(tiny_config(tmp_path / "again", *COMMON, demo_root=demo_root))
    err = capsys.readouterr().err
    warnings = [x for x in err.splitlines() if x.startswith("realsynth: warning:")]
    assert warnings == [
        f"realsynth: warning: training source 'synthetic': {ann} has no relationships in its 48 "
        "image(s); its share of every batch teaches only boxes and 'no relation'"
    ]


@pytest.fixture()
def read_only(tmp_path, monkeypatch):
    """A folder nobody may write into: ``chmod 555``, and, for root (whom permissions do not
    stop), os.mkdir / os.open refusing to create anything in it as the kernel would."""
    import errno
    import os

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_mkdir, real_open = os.mkdir, os.open

        def denied(path):
            target = Path(os.fsdecode(path)).absolute()
            if target.parent == folder and not target.exists():
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

        def mkdir(path, *args, **kwargs):
            denied(path)
            return real_mkdir(path, *args, **kwargs)

        def open_(path, flags, *args, **kwargs):
            if flags & os.O_CREAT:
                denied(path)
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", open_)
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("inside", [True, False], ids=["missing-run-folder", "the-folder-itself"])
def test_a_read_only_output_dir_is_refused_in_one_line_before_any_work(
    tmp_path, read_only, capsys, inside
):
    out = read_only / "run" if inside else read_only
    demo = tmp_path / "demo-never-made"
    assert main([*_cli(tmp_path, demo), f"OUTPUT_DIR={out}"]) == 2
    line = _error_line(capsys.readouterr().err)
    why = (
        f"permission denied: cannot create it ({read_only} is not writable)"
        if inside
        else "permission denied: the folder is not writable"
    )
    assert line == f"realsynth: error: OUTPUT_DIR {out}: {why}; choose another OUTPUT_DIR"
    assert not demo.exists()  # refused before the data was even generated
    assert list(read_only.iterdir()) == []


def test_an_output_dir_behind_a_file_is_refused_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "run"):
        assert main([*_cli(tmp_path, tmp_path / "demo"), f"OUTPUT_DIR={out}"]) == 2
        line = _error_line(capsys.readouterr().err)
        assert line == (
            f"realsynth: error: OUTPUT_DIR {out}: {blocker} is a file, not a folder; choose "
            "another OUTPUT_DIR"
        )


ADAPTIVE = "DATASETS.MULTI_DATASET.ADAPTIVE"


def test_a_holdout_source_the_demo_lacks_names_the_demos_sources(tmp_path, demo_root, capsys):
    # The demo's sources are not in DATASETS.SOURCES: the error used to list "one of []" and
    # refuse the demo's real source too.
    holdout = (f"{ADAPTIVE}.ENABLED=true", f"{ADAPTIVE}.HOLDOUT_SOURCE=real")
    data = build.build_data(tiny_config(tmp_path, *holdout, demo_root=demo_root))
    assert (data.holdout.source, data.holdout.indices, data.names) == ("real", None, ["synthetic"])
    expected = (
        f"{ADAPTIVE}.HOLDOUT_SOURCE='synthetic' must name a real source of the run, one of "
        "['real'] (the run's sources: real (real), synthetic (synthetic))"
    )
    cfg = tiny_config(
        tmp_path,
        f"{ADAPTIVE}.ENABLED=true",
        f"{ADAPTIVE}.HOLDOUT_SOURCE=synthetic",
        demo_root=demo_root,
    )
    with pytest.raises(ConfigError) as info:
        build.build_data(cfg)
    assert str(info.value) == expected
    overrides = [f"{k}={v}" for k, v in _flat_overrides(cfg)]
    more = [f"{ADAPTIVE}.ENABLED=true", f"{ADAPTIVE}.HOLDOUT_SOURCE=synthetic"]
    assert main(["train", *overrides, *more]) == 2
    assert capsys.readouterr().err == f"realsynth: error: {expected}\n"


def test_a_share_schedule_on_a_one_source_run_is_refused_before_the_first_step(
    tmp_path, demo_root, capsys
):
    # It used to stop at step 1 with "AssertionError: no message" and advise running it again.
    real = demo_root / "real"
    source = (
        f"DATASETS.SOURCES=[{{NAME: real, PATH: {real / 'train' / 'annotations.json'}, "
        f"VAL_PATH: {real / 'val' / 'annotations.json'}}}]"
    )
    schedule = "DATASETS.SOURCES[0].RATIO_SCHEDULE"
    overrides = [
        *(
            f"{k}={v}"
            for k, v in _flat_overrides(tiny_config(tmp_path, *COMMON, demo_root=demo_root))
        ),
        source,
        f"{schedule}.KIND=linear",
        f"{schedule}.START_VALUE=0.2",
        f"{schedule}.END_VALUE=0.9",
    ]
    assert main(["train", *overrides]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"realsynth: error: command line: {schedule}.KIND=linear: DATASETS.SOURCES holds one "
        "source, which always fills the whole batch (share 1); set KIND constant, or add a "
        "source whose share it would trade against\n"
    )
    assert not (tmp_path / "run").exists()  # nothing started


def test_a_demo_folder_made_with_other_settings_is_generated_again_saying_so(
    tmp_path, demo_root, capsys
):
    capsys.readouterr()
    cfg = tiny_config(tmp_path, *COMMON, "DATASETS.DEMO.REAL_TRAIN=30", demo_root=demo_root)
    data = build.build_data(cfg)
    assert len(data.train[data.names.index("real")]) == 30
    assert capsys.readouterr().out.splitlines() == [
        f"realsynth: the demo data in {demo_root} was made with REAL_TRAIN=24, not 30: "
        "generating it again (it is a cache of DATASETS.DEMO)"
    ]
    build.build_data(cfg)  # now it matches: used as it is, without a word
    assert capsys.readouterr().out == ""


def test_a_demo_root_that_realsynth_did_not_make_is_refused_in_one_line(tmp_path, capsys):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("my own files")
    assert main(_cli(tmp_path, root)) == 2
    line = _error_line(capsys.readouterr().err)
    assert line == (
        f"realsynth: error: DATASETS.DEMO.ROOT={root} is not empty and was not made by "
        "realsynth; choose a new or empty folder (the demo data is generated there)"
    )
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]


def _not_utf8(folder: Path, name: bytes) -> Path:
    """``folder/name`` for a name holding bytes that are not UTF-8 (surrogate-escaped)."""
    import os

    return Path(os.fsdecode(bytes(folder) + b"/" + name))


def test_a_demo_cache_under_a_home_that_is_not_utf8_trains_and_prints_its_path(
    tmp_path, capsys, monkeypatch
):
    from tiny_runs import TINY

    cache = _not_utf8(tmp_path, b"caf\xe9")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    run = [f"OUTPUT_DIR={tmp_path / 'run'}", "SOLVER.MAX_ITER=1"]
    assert main(["train", *TINY, *COMMON, *run]) == 0
    out = capsys.readouterr().out  # a strict UTF-8 stream, as on most terminals
    shown = repr(bytes(tmp_path) + b"/caf\xe9/realsynth/demo/")[:-1]
    assert f"Generating the demo data into {shown}" in out
    assert (tmp_path / "run" / "eval.json").exists()


def test_a_source_path_that_is_not_utf8_is_refused_naming_its_bytes(tmp_path, demo_root):
    from omegaconf import OmegaConf

    from realsynth.config import ConfigError

    folder = _not_utf8(tmp_path, b"caf\xe9")
    folder.mkdir()
    ann = folder / "annotations.json"
    ann.write_bytes((demo_root / "real" / "train" / "annotations.json").read_bytes())
    source = f"{{NAME: real, TYPE: real, PATH: {demo_root / 'real/train/annotations.json'}}}"
    cfg = tiny_config(tmp_path, f"DATASETS.SOURCES=[{source}]", demo_root=demo_root)
    OmegaConf.set_readonly(cfg, False)
    cfg.DATASETS.SOURCES[0].PATH = str(ann)  # only the Python API can pass such a value
    with pytest.raises(ConfigError) as info:
        build.build_data(cfg)
    assert str(info.value) == (
        f"DATASETS.SOURCES real.PATH: {bytes(ann)!r} is not valid UTF-8, which a run's "
        "config.yaml cannot record; rename it, or link it from a UTF-8 path"
    )
