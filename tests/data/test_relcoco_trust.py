"""relcoco's loss_weight / ignore fields: loaded into the targets, checked, absent = as before."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from realsynth.data.formats.relcoco import RelCocoDataset
from realsynth.data.problems import DatasetProblems

BASE = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": 20, "height": 20},
        {"id": 2, "file_name": "b.png", "width": 20, "height": 20},
    ],
    "categories": [{"id": 1, "name": "cube"}, {"id": 2, "name": "ball"}],
    "predicates": [{"id": 1, "name": "left of"}],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
        {"id": 11, "image_id": 1, "category_id": 2, "bbox": [10, 10, 5, 5]},
        {"id": 12, "image_id": 2, "category_id": 1, "bbox": [2, 2, 4, 4]},
        {"id": 13, "image_id": 2, "category_id": 2, "bbox": [12, 2, 4, 4]},
    ],
    "relationships": [
        {"image_id": 1, "subject_id": 10, "object_id": 11, "predicate_id": 1},
        {"image_id": 2, "subject_id": 12, "object_id": 13, "predicate_id": 1},
        {"image_id": 2, "subject_id": 13, "object_id": 12, "predicate_id": 1},
    ],
}


def _write(tmp_path: Path, data: dict) -> RelCocoDataset:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (20, 20)).save(images / name)
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return RelCocoDataset(path, images)


def test_trust_fields_reach_the_annotation(tmp_path) -> None:
    data = copy.deepcopy(BASE)
    data["annotations"][3]["loss_weight"] = 0.5
    data["annotations"][2]["ignore"] = True
    data["relationships"][2]["loss_weight"] = 0.25
    ds = _write(tmp_path, data)
    second = ds.annotation(1)
    assert second["box_weights"].tolist() == [1.0, 0.5]
    assert second["box_ignore"].tolist() == [True, False]
    assert second["relation_weights"].tolist() == [1.0, 0.25]
    assert second["relation_ignore"].tolist() == [False, False]
    assert ds.annotation(0)["box_weights"].tolist() == [1.0, 1.0]


def test_a_file_without_trust_fields_loads_as_before(tmp_path) -> None:
    item = _write(tmp_path, copy.deepcopy(BASE)).annotation(1)
    assert not {"box_weights", "box_ignore", "relation_weights", "relation_ignore"} & set(item)


@pytest.mark.parametrize(
    ("entry", "field", "value", "message"),
    [
        (
            "annotations",
            "loss_weight",
            -1,
            "annotations\\[1\\]: loss_weight must be a finite number >= 0, got -1",
        ),
        (
            "relationships",
            "loss_weight",
            "high",
            "relationships\\[0\\]: loss_weight must be a finite",
        ),
        ("relationships", "ignore", 1, "relationships\\[0\\]: ignore must be true or false, got 1"),
    ],
)
def test_bad_trust_values_name_the_entry(tmp_path, entry, field, value, message) -> None:
    data = copy.deepcopy(BASE)
    data[entry][1 if entry == "annotations" else 0][field] = value
    with pytest.raises(DatasetProblems, match=message):
        _write(tmp_path, data)


def test_trust_survives_the_training_transforms(tmp_path) -> None:
    from realsynth.data.transforms import build_transforms

    data = copy.deepcopy(BASE)
    data["relationships"][1]["ignore"] = True
    path_ds = _write(tmp_path, data)
    ds = RelCocoDataset(
        path_ds.ann_file,
        path_ds.image_root,
        transforms=build_transforms(train=True, min_sizes=[32], max_size=64, flip_prob=1.0),
    )
    item = ds[1]
    assert torch.equal(item["relation_ignore"], torch.tensor([True, False]))
