"""The binary index cache of a relcoco file: the same items without the JSON, rebuilt whenever the
file changes or the cache is damaged, and never trusted over a missing image file."""

from __future__ import annotations

import os

import pytest
import torch

from realsynth.data.formats import relcoco, relcoco_cache
from realsynth.data.formats.relcoco import RelCocoDataset
from realsynth.data.formats.relcoco_cache import cache_path
from realsynth.data.problems import DatasetProblems


@pytest.fixture
def small_files_cached(monkeypatch):
    monkeypatch.setattr(relcoco_cache, "MIN_CACHED_BYTES", 0)


def _items_equal(a: RelCocoDataset, b: RelCocoDataset) -> None:
    assert len(a) == len(b) and a.classes == b.classes and a.predicates == b.predicates
    for index in range(len(a)):
        x, y = a.annotation(index), b.annotation(index)
        assert x.keys() == y.keys()
        for key in x:
            same = (
                torch.equal(x[key], y[key])
                if isinstance(x[key], torch.Tensor)
                else x[key] == y[key]
            )
            assert same, (index, key)


def test_a_cached_index_gives_the_same_items_without_reading_the_json(
    demo_root, tmp_path, monkeypatch, small_files_cached
):
    folder = demo_root / "synthetic" / "train"
    ann, images = folder / "annotations.json", folder / "images"
    parsed = RelCocoDataset(ann, images, index_cache=tmp_path)
    assert cache_path(tmp_path, ann).is_file()

    def no_parsing(path):
        raise AssertionError("the JSON was parsed although the cache is valid")

    monkeypatch.setattr(relcoco, "load_relcoco_json", no_parsing)
    _items_equal(RelCocoDataset(ann, images, index_cache=tmp_path), parsed)
    assert [len(v) for v in parsed.label_counts()] == [3, 5]


def test_a_changed_file_or_a_damaged_cache_is_rebuilt(demo_root, tmp_path, small_files_cached):
    folder = tmp_path / "data"
    folder.mkdir()
    source = demo_root / "real" / "train"
    ann = folder / "annotations.json"
    ann.write_bytes((source / "annotations.json").read_bytes())
    first = RelCocoDataset(ann, source / "images", index_cache=tmp_path / "cache")
    # Same bytes, new mtime: the key changes, the index is rebuilt (and equal).
    stat = ann.stat()
    os.utime(ann, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    _items_equal(RelCocoDataset(ann, source / "images", index_cache=tmp_path / "cache"), first)
    cache_path(tmp_path / "cache", ann).write_bytes(b"not a zip file")
    _items_equal(RelCocoDataset(ann, source / "images", index_cache=tmp_path / "cache"), first)


def test_a_missing_image_is_reported_even_with_a_cached_index(
    demo_root, tmp_path, small_files_cached
):
    source = demo_root / "real" / "val"
    images = tmp_path / "images"
    images.mkdir()
    for path in (source / "images").iterdir():
        (images / path.name).write_bytes(path.read_bytes())
    ann = source / "annotations.json"
    dataset = RelCocoDataset(ann, images, index_cache=tmp_path / "cache")
    gone = dataset.file_name(0)
    (images / gone).unlink()
    with pytest.raises(DatasetProblems, match="missing_image") as error:
        RelCocoDataset(ann, images, index_cache=tmp_path / "cache")
    assert gone in str(error.value)


def test_trust_fields_survive_the_cache(demo_root, tmp_path, small_files_cached):
    import json

    source = demo_root / "real" / "train"
    data = json.loads((source / "annotations.json").read_text())
    for k, ann in enumerate(data["annotations"]):
        ann["loss_weight"] = 0.25 * (k % 4)
        ann["ignore"] = k % 5 == 0
    ann = tmp_path / "trusted.json"
    ann.write_text(json.dumps(data))
    first = RelCocoDataset(ann, source / "images", index_cache=tmp_path / "cache")
    again = RelCocoDataset(ann, source / "images", index_cache=tmp_path / "cache")
    assert first._trust is not None and again._trust is not None
    _items_equal(again, first)
    assert again.annotation(0)["box_ignore"].dtype == torch.bool
