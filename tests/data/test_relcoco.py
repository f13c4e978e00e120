"""relcoco: writer/reader round trip, id mapping, bad samples, seeded loading, statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from realsynth.data.collate import collate_relations
from realsynth.data.formats.relcoco import RelCocoDataset, write_relcoco
from realsynth.data.images import BadSampleError
from realsynth.data.problems import DatasetProblems
from realsynth.data.stats import combine_statistics, compute_statistics
from realsynth.data.transforms import build_transforms

CLASSES = ["cup", "table", "person"]
PREDICATES = ["on", "left of", "right of"]


def make_records(count: int = 4) -> list[dict]:
    rng = np.random.default_rng(7)
    records = []
    for k in range(count):
        w, h = 40 + 4 * k, 30 + 2 * k
        n = 2 + k % 2
        x0 = rng.integers(0, w // 2, size=n)
        y0 = rng.integers(0, h // 2, size=n)
        boxes = np.stack([x0, y0, x0 + 5 + k, y0 + 6], axis=1)
        records.append(
            {
                "file_name": f"sub/{k}.png",
                "width": w,
                "height": h,
                "boxes": boxes,
                "labels": rng.integers(0, len(CLASSES), size=n),
                "relations": np.array([[0, 1, k % 3], [1, 0, (k + 1) % 3]]),
            }
        )
    return records


def write_dataset(root: Path, records: list[dict]) -> Path:
    for r in records:
        (root / "images" / r["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (r["width"], r["height"]), (10, 20, 30)).save(
            root / "images" / r["file_name"]
        )
    return write_relcoco(
        root / "annotations.json", classes=CLASSES, predicates=PREDICATES, images=records
    )


def test_round_trip(tmp_path: Path) -> None:
    records = make_records()
    ds = RelCocoDataset(write_dataset(tmp_path, records), tmp_path / "images", source="real")
    assert len(ds) == 4 and ds.classes == CLASSES and ds.predicates == PREDICATES
    for k, rec in enumerate(records):
        item = ds[k]
        w, h = rec["width"], rec["height"]
        b = torch.tensor(rec["boxes"], dtype=torch.float32)
        expected = torch.stack(
            [
                (b[:, 0] + b[:, 2]) / 2 / w,
                (b[:, 1] + b[:, 3]) / 2 / h,
                (b[:, 2] - b[:, 0]) / w,
                (b[:, 3] - b[:, 1]) / h,
            ],
            1,
        )
        assert torch.allclose(item["boxes"], expected, atol=1e-6)
        assert item["labels"].tolist() == list(rec["labels"])
        assert item["relations"].tolist() == rec["relations"].tolist()
        assert item["orig_size"].tolist() == [h, w] and item["size"].tolist() == [h, w]
        assert item["image"].shape == (3, h, w) and item["source"] == "real"
        assert torch.allclose(item["image"][:, 0, 0], torch.tensor([10, 20, 30]) / 255.0)


def test_noncontiguous_ids_map_in_id_order(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 42, "file_name": "a.png", "width": 10, "height": 10}],
        "annotations": [
            {"id": 7, "image_id": 42, "category_id": 9, "bbox": [0, 0, 2, 2]},
            {"id": 3, "image_id": 42, "category_id": 2, "bbox": [5, 5, 2, 2]},
        ],
        "categories": [{"id": 9, "name": "nine"}, {"id": 2, "name": "two"}],
        "predicates": [{"id": 30, "name": "thirty"}, {"id": 4, "name": "four"}],
        "relationships": [{"image_id": 42, "subject_id": 3, "object_id": 7, "predicate_id": 30}],
    }
    (tmp_path / "a.json").write_text(json.dumps(data))
    ds = RelCocoDataset(tmp_path / "a.json", tmp_path, check_files=False)
    assert ds.classes == ["two", "nine"] and ds.predicates == ["four", "thirty"]
    ann = ds.annotation(0)
    assert ann["labels"].tolist() == [1, 0]
    assert ann["relations"].tolist() == [[1, 0, 1]]
    assert ann["boxes"].tolist() == [[0, 0, 2, 2], [5, 5, 7, 7]]


def test_broken_reference_raises_with_location(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, make_records(2))
    data = json.loads(path.read_text())
    data["relationships"][1]["predicate_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"relationships\[1\].*predicate_id 99"):
        RelCocoDataset(path, tmp_path / "images")


def test_missing_image_stops_construction_or_is_left_out_and_listed(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, make_records(3))
    (tmp_path / "images" / "sub" / "1.png").unlink()
    with pytest.raises(DatasetProblems) as info:
        RelCocoDataset(path, tmp_path / "images", source="synthetic-v2")
    message = str(info.value)
    assert message.splitlines()[0].startswith(f"{path} (source 'synthetic-v2'): 1 problem(s)")
    assert "SKIP_BAD_SAMPLES" in message
    assert "[missing_image] x1" in message and "images[1] (id 2, sub/1.png)" in message
    skipping = RelCocoDataset(path, tmp_path / "images", skip_bad_samples=True)
    assert len(skipping) == 2
    assert [t["file_name"] for t in (skipping.annotation(0), skipping.annotation(1))] == [
        "sub/0.png",
        "sub/2.png",
    ]
    assert [(s.file_name, s.reason.code) for s in skipping.skipped] == [
        ("sub/1.png", "missing_image")
    ]


def test_image_unreadable_at_load_time_is_named_when_skipped(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, make_records(2))
    (tmp_path / "images" / "sub" / "1.png").write_bytes(b"not a png")
    ds = RelCocoDataset(path, tmp_path / "images", source="synthetic-v2")
    with pytest.raises(BadSampleError, match=r"synthetic-v2.*sub/1\.png"):
        ds[1]
    skipping = RelCocoDataset(path, tmp_path / "images", source="syn", skip_bad_samples=True)
    batch = collate_relations([skipping[0], skipping[1], skipping[1]])
    assert batch["num_skipped"] == 2 and len(batch["targets"]) == 1
    assert batch["skipped"] == ["syn/sub/1.png", "syn/sub/1.png"]


def test_corrupt_or_resized_image_is_a_bad_sample(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, make_records(2))
    (tmp_path / "images" / "sub" / "0.png").write_bytes(b"not a png")
    Image.new("RGB", (5, 5)).save(tmp_path / "images" / "sub" / "1.png")
    ds = RelCocoDataset(path, tmp_path / "images")
    with pytest.raises(BadSampleError, match="cannot read image"):
        ds[0]
    with pytest.raises(BadSampleError, match="5x5"):
        ds[1]


def test_augmentation_is_a_function_of_seed_epoch_index(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, make_records(4))
    t = build_transforms(train=True, min_sizes=[20, 24, 28], max_size=60, flip_prob=0.5)
    a = RelCocoDataset(path, tmp_path / "images", transforms=t, seed=3)
    b = RelCocoDataset(path, tmp_path / "images", transforms=t, seed=3)
    sizes = []
    for epoch in range(4):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for k in range(4):
            ia, ib = a[k], b[k]
            assert torch.equal(ia["image"], ib["image"]) and torch.equal(ia["boxes"], ib["boxes"])
            sizes.append(tuple(ia["size"].tolist()))
    assert len(set(sizes)) > 3  # epochs and indices draw different sizes


def test_dataloader_workers_give_identical_batches(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, make_records(4))
    t = build_transforms(train=True, min_sizes=[20, 28], max_size=60, flip_prob=0.5)
    ds = RelCocoDataset(path, tmp_path / "images", transforms=t, seed=11)
    runs = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(
            ds, batch_size=2, num_workers=workers, collate_fn=collate_relations
        )
        runs.append([(b["images"], [t["boxes"] for t in b["targets"]]) for b in loader])
    for (img0, box0), (img2, box2) in zip(*runs):
        assert torch.equal(img0, img2)
        assert all(torch.equal(x, y) for x, y in zip(box0, box2))


def test_statistics_per_source_and_explicit_combination(tmp_path: Path) -> None:
    records = make_records(3)
    ds = RelCocoDataset(write_dataset(tmp_path, records), tmp_path / "images", source="real")
    stats = compute_statistics(ds)
    labels = np.concatenate([r["labels"] for r in records])
    assert stats.object_counts.tolist() == np.bincount(labels, minlength=3).tolist()
    assert stats.predicate_counts.tolist() == [2, 2, 2]  # (k, k+1) mod 3 for k = 0..2
    other = type(stats)(
        "synthetic",
        stats.classes,
        stats.predicates,
        3,
        stats.object_counts * 2,
        stats.predicate_counts,
    )
    objects, preds = combine_statistics([stats, other], weights={"real": 1.0, "synthetic": 0.5})
    assert objects.tolist() == (stats.object_counts * 2.0).tolist()
    assert preds.tolist() == [3.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="no weight given for source"):
        combine_statistics([stats, other], weights={"real": 1.0})
    renamed = type(stats)(
        "x", ("a", "b", "c"), stats.predicates, 3, stats.object_counts, stats.predicate_counts
    )
    with pytest.raises(ValueError, match="vocabularies"):
        combine_statistics([stats, renamed], weights={"real": 1.0, "x": 1.0})


def test_skipped_bad_samples_pass_through_the_mixed_loader_and_are_counted(tmp_path: Path) -> None:
    from realsynth.mixing.mixed_dataset import Source, build_mixed_loader

    path = write_dataset(tmp_path, make_records(4))
    (tmp_path / "images" / "sub" / "2.png").write_bytes(b"corrupt")
    ds = RelCocoDataset(path, tmp_path / "images", source="real", skip_bad_samples=True)
    good = RelCocoDataset(write_dataset(tmp_path / "b", make_records(4)), tmp_path / "b" / "images")
    sources = [Source("real", ds, "real", 0.5, 1.0), Source("syn", good, "synthetic", 0.5, 0.5)]
    loader = build_mixed_loader(sources, 4, seed=0, collate_fn=collate_relations)
    batches = list(loader)  # one pass over the real source: 2 batches of 2 + 2
    assert sum(b["num_skipped"] for b in batches) == 1
    assert [name for b in batches for name in b["skipped"]] == ["real/sub/2.png"]
    assert sum(len(b["targets"]) for b in batches) == 7
    assert all(
        t["file_name"] != "sub/2.png" or t["source"] == "syn" for b in batches for t in b["targets"]
    )


def test_mixed_items_draw_augmentation_from_the_global_index(tmp_path: Path) -> None:
    from realsynth.data.transforms import item_rng
    from realsynth.mixing.mixed_dataset import MixedDataset, Source

    path = write_dataset(tmp_path, make_records(4))
    t = build_transforms(train=True, min_sizes=[20, 24, 28], max_size=60, flip_prob=0.5)
    a = RelCocoDataset(path, tmp_path / "images", transforms=t)
    b = RelCocoDataset(path, tmp_path / "images", transforms=t)
    mixed = MixedDataset(
        [Source("a", a, "real", 0.5, 1.0), Source("b", b, "synthetic", 0.5, 1.0)], seed=3
    )
    mixed.set_epoch(2)
    for global_index in (1, 5):
        expected = a.get_item(1, item_rng(3, 2, global_index))
        assert torch.equal(mixed[global_index]["image"], expected["image"])
    # The same local item in two sources is augmented independently (different sizes here).
    sizes = {tuple(mixed[g]["image"].shape) for g in range(8)}
    assert len(sizes) > 4


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["annotations"][1].pop("bbox"), r"annotations\[1\] \(id 2\): lacks \['bbox'\]"),
        (lambda d: d["images"][0].pop("file_name"), r"images\[0\] \(id 1\): 'file_name' must be"),
        (lambda d: d["relationships"][0].pop("predicate_id"), r"relationships\[0\]: lacks"),
        (
            lambda d: d["annotations"][2].update(bbox=[1, 2, 0, 5]),
            r"annotations\[2\] .*zero or negative",
        ),
    ],
)
def test_malformed_entries_name_the_file_list_and_position(tmp_path: Path, edit, message) -> None:
    import json

    path = write_dataset(tmp_path, make_records(2))
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as info:
        RelCocoDataset(path, tmp_path / "images")
    assert str(path) in str(info.value)
