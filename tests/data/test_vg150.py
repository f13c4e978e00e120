"""VG150 loader: Scene-Graph-Benchmark semantics on a hand-built h5."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from realsynth.data.formats.vg150 import VG150Dataset, split_rows, vg150_from_folder

# Five h5 rows; image_data.json also lists corrupted id 1592, which must be dropped.
IMAGES = [
    {"image_id": 10, "width": 160, "height": 120},
    {"image_id": 1592, "width": 50, "height": 50},
    {"image_id": 11, "width": 100, "height": 100},
    {"image_id": 12, "width": 200, "height": 100},
    {"image_id": 13, "width": 128, "height": 128},
    {"image_id": 14, "width": 64, "height": 64},
]
H5 = {
    "split": [0, 0, 2, 0, 0],
    "img_to_first_box": [0, 2, 4, 6, -1],
    "img_to_last_box": [1, 3, 5, 7, -1],
    "img_to_first_rel": [0, -1, 2, 3, -1],
    "img_to_last_rel": [1, -1, 2, 3, -1],
    # cx, cy, w, h at longest side 1024.
    "boxes_1024": [
        [512, 256, 200, 100],
        [560, 300, 100, 100],
        [100, 100, 50, 50],
        [300, 300, 50, 50],
        [200, 200, 100, 100],
        [800, 200, 100, 100],
        [100, 100, 100, 100],
        [900, 900, 100, 100],
    ],
    "labels": [[1], [2], [3], [1], [2], [3], [1], [1]],
    "relationships": [[0, 1], [0, 1], [5, 4], [6, 7]],
    "predicates": [[1], [2], [2], [1]],
}
DICTS = {"label_to_idx": {"cat": 1, "dog": 2, "tree": 3}, "predicate_to_idx": {"on": 1, "near": 2}}


def build_vg_folder(
    root: Path, *, h5_overrides: dict | None = None, images: list | None = None
) -> Path:
    """Writes the three VG150 files and VG_100K/ JPEGs of the annotated sizes under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    data = {**H5, **(h5_overrides or {})}
    with h5py.File(root / "VG-SGG-with-attri.h5", "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=np.asarray(value, dtype=np.int32))
    (root / "VG-SGG-dicts-with-attri.json").write_text(json.dumps(DICTS))
    entries = images if images is not None else IMAGES
    (root / "image_data.json").write_text(json.dumps(entries))
    (root / "VG_100K").mkdir(exist_ok=True)
    for e in entries:
        if e["image_id"] != 1592:
            Image.new("RGB", (e["width"], e["height"]), (90, 90, 90)).save(
                root / "VG_100K" / f"{e['image_id']}.jpg"
            )
    return root


@pytest.fixture()
def vg(tmp_path: Path) -> Path:
    return build_vg_folder(tmp_path / "vg")


def test_box_decoding_scales_by_longest_side(vg: Path) -> None:
    ds = vg150_from_folder(vg, split="val", num_val_images=1)
    ann = ds.annotation(0)
    factor = 160 / 1024
    expected = (
        torch.tensor([[412, 206, 612, 306], [510, 250, 610, 350]], dtype=torch.float32) * factor
    )
    assert torch.allclose(ann["boxes"], expected)
    assert ann["labels"].tolist() == [0, 1]
    assert ann["image_id"] == 10 and ann["orig_size"].tolist() == [120, 160]


def test_splits_and_val_carving(vg: Path) -> None:
    assert vg150_from_folder(vg, split="val", num_val_images=1).rows == [0]
    assert vg150_from_folder(vg, split="train", num_val_images=1).rows == [3]
    assert vg150_from_folder(vg, split="test", num_val_images=1).rows == [2]
    keep_empty = vg150_from_folder(vg, split="train", num_val_images=1, filter_empty_rels=False)
    assert keep_empty.rows == [1, 3]
    assert keep_empty.annotation(0)["relations"].shape == (0, 3)
    # Row 4 has no boxes: never included, even without the empty-relation filter.
    assert (
        4
        not in vg150_from_folder(vg, split="train", num_val_images=0, filter_empty_rels=False).rows
    )


def test_split_rows_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        split_rows(
            np.zeros(1),
            np.zeros(1),
            np.zeros(1),
            split="dev",
            num_val_images=0,
            filter_empty_rels=True,
        )


def test_relation_indices_are_made_per_image_and_zero_based(vg: Path) -> None:
    test = vg150_from_folder(vg, split="test")
    assert test.annotation(0)["relations"].tolist() == [[1, 0, 1]]
    assert test.classes == ["cat", "dog", "tree"] and test.predicates == ["on", "near"]


def test_non_overlap_filter_train_only(vg: Path) -> None:
    train = vg150_from_folder(vg, split="train", num_val_images=0, filter_non_overlap=True)
    assert train.rows == [0]  # row 3's two boxes are far apart
    # Row 2's boxes are far apart too, but the test split is never filtered.
    assert vg150_from_folder(vg, split="test", filter_non_overlap=True).rows == [2]


def test_duplicate_filter_draws_one_predicate_per_pair_on_train(vg: Path) -> None:
    train = vg150_from_folder(vg, split="train", num_val_images=0)
    seen = set()
    for epoch in range(12):
        train.set_epoch(epoch)
        rels = train[0]["relations"].tolist()
        assert len(rels) == 1 and rels[0][:2] == [0, 1]
        seen.add(rels[0][2])
    assert seen == {0, 1}
    val = vg150_from_folder(vg, split="val", num_val_images=1)
    assert val[0]["relations"].tolist() == [[0, 1, 0], [0, 1, 1]]


def test_item_boxes_normalized_and_rescaled_on_size_mismatch(vg: Path) -> None:
    ds = vg150_from_folder(vg, split="val", num_val_images=1)
    item = ds[0]
    expected = torch.tensor([512 / 1024, 256 / 768, 200 / 1024, 100 / 768])
    assert torch.allclose(item["boxes"][0], expected, atol=1e-6)
    # A file twice the annotated size: boxes follow the file (SGB's behaviour), normalized equal.
    Image.new("RGB", (320, 240)).save(vg / "VG_100K" / "10.jpg")
    item2 = ds[0]
    assert item2["orig_size"].tolist() == [240, 320]
    assert torch.allclose(item2["boxes"], item["boxes"], atol=1e-6)


def test_row_count_mismatch_is_an_error(tmp_path: Path) -> None:
    root = build_vg_folder(tmp_path / "vg", images=IMAGES[:-1])
    with pytest.raises(ValueError, match="dropping corrupted ids"):
        vg150_from_folder(root, split="train")


def test_invalid_boxes_are_rejected(tmp_path: Path) -> None:
    boxes = [list(b) for b in H5["boxes_1024"]]
    boxes[6] = [300, 300, 0, 50]  # a box of row 3, in the train split
    root = build_vg_folder(tmp_path / "vg", h5_overrides={"boxes_1024": boxes})
    with pytest.raises(ValueError, match=r"boxes_1024\[6\].*has no area"):
        VG150Dataset(
            root / "VG-SGG-with-attri.h5",
            root / "VG-SGG-dicts-with-attri.json",
            root / "image_data.json",
            root / "VG_100K",
            split="train",
            num_val_images=1,
        )


def test_missing_h5_dataset_or_image_data_key_names_the_file(tmp_path: Path) -> None:
    root = build_vg_folder(tmp_path / "vg")
    with h5py.File(root / "VG-SGG-with-attri.h5", "a") as f:
        del f["img_to_last_rel"]
    with pytest.raises(ValueError, match=r"VG-SGG-with-attri\.h5: missing h5 datasets"):
        vg150_from_folder(root, split="train")
    root = build_vg_folder(tmp_path / "vg2")
    broken = [dict(e) for e in IMAGES]
    del broken[2]["width"]
    (root / "image_data.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"image_data\.json: entry 2 lacks \['width'\]"):
        vg150_from_folder(root, split="train")


def test_a_vg150_source_in_the_run_config_builds_train_and_val_sets(tmp_path: Path) -> None:
    from realsynth.config import load_config
    from realsynth.training.data_setup import build_data

    root = build_vg_folder(tmp_path / "vg")
    source = f"{{NAME: vg, FORMAT: vg150, PATH: '{root}', VAL_SPLIT: val, NUM_VAL_IMAGES: 1}}"
    data = build_data(load_config(None, [f"DATASETS.SOURCES=[{source}]"]))
    assert data.names == ["vg"] and data.mix[0].ratio == 1.0
    assert len(data.val["vg"]) == 1
    assert len(data.train[0]) == len(vg150_from_folder(root, split="train", num_val_images=1)) > 0
    assert data.classes == ["cat", "dog", "tree"] and data.predicates == ["on", "near"]


def test_a_validation_carve_that_swallows_the_train_pool_names_the_key(vg: Path) -> None:
    with pytest.raises(ValueError) as info:
        vg150_from_folder(vg, split="train", num_val_images=5000)
    message = str(info.value)
    assert "NUM_VAL_IMAGES=5000 would leave 0 of the 2 images of the train pool" in message
    assert "use at most 1 (e.g. NUM_VAL_IMAGES=1)" in message
    with pytest.raises(ValueError, match="NUM_VAL_IMAGES is 0, so there is no validation split"):
        vg150_from_folder(vg, split="val", num_val_images=0)


def _add_trust(root: Path, **datasets) -> None:
    with h5py.File(root / "VG-SGG-with-attri.h5", "a") as f:
        for name, values in datasets.items():
            f.create_dataset(name, data=np.asarray(values, dtype=np.float32))


def test_optional_h5_trust_follows_the_chosen_duplicate(vg: Path) -> None:
    # Row 0's two relations share (subject, object): "on" weight 0.5, "near" ignored.
    _add_trust(vg, relation_loss_weight=[0.5, 1.0, 1.0, 0.25], relation_ignore=[0, 1, 0, 0])
    train = vg150_from_folder(vg, split="train", num_val_images=0)
    seen = set()
    for epoch in range(12):
        train.set_epoch(epoch)
        item = train[0]
        predicate = int(item["relations"][0, 2])
        expected = (0.5, False) if predicate == 0 else (1.0, True)
        assert (float(item["relation_weights"][0]), bool(item["relation_ignore"][0])) == expected
        assert item["box_weights"].tolist() == [1.0, 1.0]  # no box datasets: weight 1
        seen.add(predicate)
    assert seen == {0, 1}
    last = train.annotation(len(train) - 1)
    assert last["relation_weights"].tolist() == [0.25]


def test_a_vg150_file_without_trust_datasets_has_no_trust_keys(vg: Path) -> None:
    item = vg150_from_folder(vg, split="train", num_val_images=0).annotation(0)
    assert "relation_weights" not in item and "box_ignore" not in item


def test_bad_trust_datasets_name_the_file_and_dataset(tmp_path: Path) -> None:
    short = build_vg_folder(tmp_path / "short")
    _add_trust(short, box_loss_weight=[1.0, 1.0])
    with pytest.raises(ValueError, match="'box_loss_weight' has 2 entries, expected 8"):
        vg150_from_folder(short, split="train", num_val_images=0)
    negative = build_vg_folder(tmp_path / "negative")
    _add_trust(negative, relation_loss_weight=[1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="'relation_loss_weight' must be finite and >= 0; row 1"):
        vg150_from_folder(negative, split="train", num_val_images=0)
    flags = build_vg_folder(tmp_path / "flags")
    _add_trust(flags, box_ignore=[0, 2, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="'box_ignore' must hold 0 or 1 only"):
        vg150_from_folder(flags, split="train", num_val_images=0)
