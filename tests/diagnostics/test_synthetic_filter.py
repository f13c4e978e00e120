"""``realsynth data filter``: scores by hand, the three modes, the report, end to end."""

from __future__ import annotations

import builtins
import hashlib
import json
import math
import pathlib

import numpy as np
import pytest
import torch
from tiny_runs import tiny_config

from realsynth.data.formats.relcoco import RelCocoDataset
from realsynth.diagnostics.synthetic_filter import apply_filter, filter_with_run, instance_scores


def _logits(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs).log()


def test_scores_by_hand() -> None:
    # Two classes + background, two predicates + background; three queries.
    outputs = {
        "relation_subject_boxes": torch.tensor(
            [[0.25, 0.25, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1], [0.26, 0.25, 0.2, 0.2]]
        ),
        "relation_object_boxes": torch.tensor(
            [[0.75, 0.75, 0.2, 0.2], [0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]]
        ),
        "relation_subject_logits": _logits([[0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]]),
        "relation_object_logits": _logits([[0.2, 0.7, 0.1], [0.9, 0.05, 0.05], [0.1, 0.6, 0.3]]),
        "relation_logits": _logits([[0.3, 0.1, 0.6], [0.2, 0.6, 0.2], [0.1, 0.8, 0.1]]),
    }
    target = {
        "boxes": torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]]),
        "labels": torch.tensor([0, 1]),
        "relations": torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 1]]),
    }
    boxes, relations = instance_scores(outputs, target, iou=0.5)
    # Box 0 (class 0): the subjects of queries 0 (p 0.6) and 2 (IoU 0.905, p 0.5) and query 1's
    # object (p 0.9) overlap it. Box 1 (class 1): the objects of queries 0 (p 0.7) and 2 (p 0.6);
    # query 1's subject has IoU 0.25.
    np.testing.assert_allclose(boxes, [0.9, 0.7], rtol=1e-6)
    # Predicates without the background: query 0 (0.75, 0.25), query 1 (0.25, 0.75), query 2
    # (1/9, 8/9). (0 -> 1) is localized by queries 0 and 2: max(0.75, 1/9) for predicate 0,
    # max(0.25, 8/9) for predicate 1 (query 1 does not localize it). (1 -> 0): only query 1
    # comes near, min(IoU 0.25, 1) < 0.5, so 0.
    np.testing.assert_allclose(relations, [0.75, 0.0, 8 / 9], rtol=1e-6, atol=1e-9)
    _, relations = instance_scores(outputs, target, iou=0.2)
    np.testing.assert_allclose(relations, [0.75, 0.75, 8 / 9], rtol=1e-6)
    outputs["relation_logits"][2] = float("nan")  # a broken prediction confirms nothing
    _, relations = instance_scores(outputs, target, iou=0.5)
    np.testing.assert_allclose(relations, [0.75, 0.0, 0.25], rtol=1e-6, atol=1e-9)


DATA = {
    "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
    "categories": [{"id": 1, "name": "cube"}, {"id": 2, "name": "ball"}],
    "predicates": [{"id": 1, "name": "near"}],
    "annotations": [
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]},
        {"id": 6, "image_id": 1, "category_id": 2, "bbox": [5, 5, 2, 2], "loss_weight": 0.8},
        {"id": 7, "image_id": 1, "category_id": 2, "bbox": [1, 6, 2, 2]},
    ],
    "relationships": [
        {"subject_id": 5, "object_id": 6, "predicate_id": 1},
        {"subject_id": 6, "object_id": 7, "predicate_id": 1},
        {"subject_id": 5, "object_id": 7, "predicate_id": 1},
    ],
}
SCORES = {1: (np.array([0.9, 0.05, 0.5]), np.array([0.5, 0.02, 0.3]))}  # box 6 and rel 1 doubtful


def test_ignore_and_reweight_mark_the_doubtful_instances() -> None:
    ignored, report = apply_filter(DATA, SCORES, mode="ignore", score=0.1)
    assert [a.get("ignore", False) for a in ignored["annotations"]] == [False, True, False]
    assert [r.get("ignore", False) for r in ignored["relationships"]] == [False, True, False]
    assert "ignore" not in DATA["annotations"][1]  # the input is not modified
    assert report["classes"] == {
        "cube": {"kept": 1, "changed": 0, "dropped": 0},
        "ball": {"kept": 1, "changed": 1, "dropped": 0},
    }
    assert report["doubtful_annotation_ids"] == [6] and report["doubtful_relationships"] == [1]
    weighted, _ = apply_filter(DATA, SCORES, mode="reweight", score=0.1, weight=0.5)
    assert [a.get("loss_weight", 1.0) for a in weighted["annotations"]] == [1.0, 0.4, 1.0]
    assert [r.get("loss_weight", 1.0) for r in weighted["relationships"]] == [1.0, 0.5, 1.0]


def test_drop_removes_a_doubtful_box_with_its_relationships() -> None:
    dropped, report = apply_filter(DATA, SCORES, mode="drop", score=0.1)
    assert [a["id"] for a in dropped["annotations"]] == [5, 7]
    assert dropped["relationships"] == [DATA["relationships"][2]]
    # Relationship 0 uses the dropped box 6; relationship 1 is doubtful itself.
    assert report["predicates"] == {"near": {"kept": 1, "changed": 0, "dropped": 2}}
    with pytest.raises(ValueError, match="mode must be one of"):
        apply_filter(DATA, SCORES, mode="delete", score=0.1)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from realsynth.training.train import train

    tmp = tmp_path_factory.mktemp("filter")
    cfg = tiny_config(
        tmp, "SOLVER.MAX_ITER=3", "TEST.EVAL_PERIOD=0", "DATASETS.DEMO.LABEL_NOISE=0.5"
    )
    train(cfg)
    return tmp / "run", pathlib.Path(cfg.DATASETS.DEMO.ROOT)


def test_filter_end_to_end_never_reads_the_corruption_record(trained_run, tmp_path, monkeypatch):
    run, demo = trained_run
    source = demo / "synthetic" / "val" / "annotations.json"
    assert (source.parent / "corruption.json").exists()
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    opened = []
    real_open = builtins.open

    def recording_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    out = tmp_path / "filtered.json"
    report = filter_with_run(run, source, out, mode="ignore", score=0.5)
    monkeypatch.setattr(builtins, "open", real_open)
    assert not [p for p in opened if p.endswith("corruption.json")]
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before
    filtered = RelCocoDataset(out, source.parent / "images")  # a valid relcoco file
    written = json.loads(out.read_text())
    flagged = [a["id"] for a in written["annotations"] if a.get("ignore")]
    assert flagged == report["doubtful_annotation_ids"]
    counted = sum(row["changed"] for row in report["classes"].values())
    assert counted == len(flagged) and len(filtered) == 6
    assert json.loads((tmp_path / "filtered.report.json").read_text())["mode"] == "ignore"
    with pytest.raises(ValueError, match="is the input file"):
        filter_with_run(run, source, source)
    assert math.isclose(report["score"], 0.5)


def test_cli_filter_prints_the_report_and_refuses_to_overwrite_the_input(
    trained_run, tmp_path, capsys
):
    from realsynth.cli import main

    run, demo = trained_run
    source = demo / "synthetic" / "val" / "annotations.json"
    out = tmp_path / "dropped.json"
    args = ["data", "filter", "--run", str(run), "--source", str(source), "--out", str(out)]
    assert main([*args, "--mode", "drop", "--score", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "| class | kept | dropped | dropped with a box |" in printed and str(out) in printed
    assert f"IMAGE_ROOT={source.parent / 'images'}" in printed  # written away from its images
    assert (
        main(["data", "filter", "--run", str(run), "--source", str(source), "--out", str(source)])
        == 2
    )
    assert "is the input file" in capsys.readouterr().err


def test_a_filtered_file_written_elsewhere_trains_with_its_images_and_val_keeps_its_own(
    trained_run, tmp_path
) -> None:
    from realsynth.config import load_config
    from realsynth.training.data_setup import build_data

    run, demo = trained_run
    train_json = demo / "synthetic" / "train" / "annotations.json"
    out = tmp_path / "elsewhere" / "filtered.json"
    out.parent.mkdir()
    filter_with_run(run, train_json, out, mode="ignore", score=0.5)
    config = tmp_path / "filtered.yaml"
    real = demo / "real"
    config.write_text(
        "DATASETS:\n  SOURCES:\n"
        f"    - {{NAME: real, PATH: {real / 'train/annotations.json'},"
        f" VAL_PATH: {real / 'val/annotations.json'}}}\n"
        f"    - {{NAME: synthetic, TYPE: synthetic, PATH: {out},"
        f" IMAGE_ROOT: {train_json.parent / 'images'},"
        f" VAL_PATH: {demo / 'synthetic/val/annotations.json'},"
        f" VAL_IMAGE_ROOT: {demo / 'synthetic/val/images'}}}\n"
    )
    data = build_data(load_config(config, ["MODEL.PRESET=tiny"]))
    assert data.train[1].image_root == train_json.parent / "images"
    assert data.val["synthetic"].image_root == demo / "synthetic" / "val" / "images"
    assert data.val["real"].image_root == real / "val" / "images"  # the default, beside the JSON
    assert data.val["synthetic"][0]["image"].shape[0] == 3  # its images are found


@pytest.mark.parametrize(
    "content, missing",
    [
        ({"images": [], "annotations": []}, ["categories", "predicates", "relationships"]),
        ([1, 2], ["images", "annotations", "categories", "predicates", "relationships"]),
    ],
    ids=["coco-like", "a-list"],
)
def test_cli_filter_refuses_a_json_that_is_not_relcoco_in_one_line(
    trained_run, tmp_path, capsys, content, missing
):
    from realsynth.cli import main
    from realsynth.data.check import check_dataset

    run, _ = trained_run
    source = tmp_path / "other.json"
    source.write_text(json.dumps(content))
    out = tmp_path / "out.json"
    args = ["data", "filter", "--run", str(run), "--source", str(source), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.startswith(f"realsynth: error: {source}: invalid_file: missing top-level list(s) ")
    assert str(missing) in err and f"`realsynth data check {source}`" in err
    assert [p.code for p in check_dataset(source).errors] == ["invalid_file"]  # the same name
    assert not out.exists()


def test_cli_filter_writes_to_and_names_a_folder_that_is_not_utf8(trained_run, tmp_path, capsys):
    import os

    from realsynth.cli import main

    run, demo = trained_run
    source = demo / "synthetic" / "val" / "annotations.json"
    out = pathlib.Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9")) / "filtered.json"
    args = ["data", "filter", "--run", str(run), "--source", str(source), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out  # a strict UTF-8 stream, as on most terminals
    report = out.with_name("filtered.report.json")
    assert f"Wrote {bytes(out)!r} and {bytes(report)!r}" in printed
    assert RelCocoDataset(out, source.parent / "images") and report.exists()
