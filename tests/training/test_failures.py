"""Errors before and during a run: start-up validation, what is kept, what is said, and where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_runs import assert_same_records, tiny_config, train_records

from realsynth.cli import main
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
        ("MODEL.BACKBONE_CHANNELS", "[8,16,32]")
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
