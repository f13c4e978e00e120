"""Sharded sources: conversion (deterministic, resumable, atomic), reading (equal to the source
it was converted from), serving over a real HTTP server, and ``data check`` on shards."""

from __future__ import annotations

import functools
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from realsynth.cli import main
from realsynth.data.formats.relcoco import RelCocoDataset
from realsynth.data.shards.check import check_shards
from realsynth.data.shards.convert import convert_to_shards, shard_name
from realsynth.data.shards.dataset import ShardedDataset
from realsynth.data.shards.locations import ShardLocationError
from realsynth.data.transforms import build_transforms

pytest.importorskip("wids")


def _relcoco(demo_root: Path, kind: str = "synthetic", split: str = "train") -> RelCocoDataset:
    folder = demo_root / kind / split
    return RelCocoDataset(folder / "annotations.json", folder / "images", source=kind)


def _same_item(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype, key
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def shards(demo_root, tmp_path_factory):
    """The tiny demo's synthetic training set (48 images) in shards of 10 (the last holds 8)."""
    out = tmp_path_factory.mktemp("shards") / "synthetic"
    convert_to_shards(_relcoco(demo_root), out, samples_per_shard=10, converted_from={"x": 1})
    return out


@pytest.fixture(scope="module")
def http_root(shards):
    """A real HTTP server (Python's http.server) serving the shard folder's parent."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shards.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_sharded_source_reads_back_what_was_converted_item_for_item(demo_root, shards):
    source = _relcoco(demo_root)
    sharded = ShardedDataset(shards, source="synthetic")
    assert len(sharded) == len(source) == 48
    assert sharded.shard_sizes.tolist() == [10, 10, 10, 10, 8]
    assert (sharded.classes, sharded.predicates) == (source.classes, source.predicates)
    for ours, theirs in zip(sharded.label_counts(), source.label_counts()):
        assert np.array_equal(ours, theirs)
    # With the training transforms (random resize and flip drawn from the item's seed).
    for dataset in (source, sharded):
        dataset.transforms = build_transforms(train=True, min_sizes=[48, 64], max_size=80)
        dataset.set_epoch(3)
    for index in range(len(source)):
        _same_item(sharded[index], source[index])
    assert sharded.misses == 5 and sharded.accesses == 48  # each shard opened once, in order


def test_the_same_source_gives_the_same_bytes_with_any_number_of_workers(
    demo_root, shards, tmp_path
):
    out = tmp_path / "again"
    report = convert_to_shards(
        _relcoco(demo_root), out, samples_per_shard=10, workers=2, converted_from={"x": 1}
    )
    assert (report.shards, report.written, report.samples) == (5, 5, 48)
    _same_shards(out, shards)


def test_a_killed_conversion_resumes_with_the_shards_it_lacks(demo_root, shards, tmp_path):
    out = tmp_path / "resumed"
    source = _relcoco(demo_root)
    convert_to_shards(source, out, samples_per_shard=10, converted_from={"x": 1})
    (out / shard_name(2)).unlink()
    (out / "index.json").unlink()
    (out / f".{shard_name(2)}.abc.part").write_bytes(b"half a shard")  # left by the kill
    report = convert_to_shards(source, out, samples_per_shard=10, converted_from={"x": 1})
    assert (report.shards, report.written) == (5, 1)
    assert not list(out.glob(".*.part"))
    _same_shards(out, shards)


def _same_shards(ours: Path, theirs: Path) -> None:
    """Byte-identical shards, and the same index.json but for its name (the folder's)."""
    for name in [shard_name(k) for k in range(5)]:
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
    ours_index, theirs_index = (json.loads((p / "index.json").read_text()) for p in (ours, theirs))
    assert ours_index.pop("name") == ours.name
    theirs_index.pop("name")
    assert ours_index == theirs_index


def test_a_folder_holding_another_conversion_is_refused(demo_root, shards):
    with pytest.raises(ValueError, match=r"holds another conversion .*plan\.json: 48 samples"):
        convert_to_shards(_relcoco(demo_root), shards, samples_per_shard=7)


def test_a_failing_conversion_leaves_no_partial_shard_and_no_index(demo_root, tmp_path):
    source = _relcoco(demo_root)

    class Failing(RelCocoDataset):
        def annotation(self, index):
            if index == 15:
                raise OSError("disk went away")
            return super().annotation(index)

    failing = Failing.__new__(Failing)
    failing.__dict__.update(source.__dict__)
    out = tmp_path / "failed"
    with pytest.raises(OSError, match="disk went away"):
        convert_to_shards(failing, out, samples_per_shard=10)
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", shard_name(0)]


def test_shards_served_over_http_read_as_the_local_copy(shards, http_root, tmp_path):
    local = ShardedDataset(shards, source="s")
    remote = ShardedDataset(f"{http_root}/synthetic", source="s", cache_dir=tmp_path / "cache")
    assert remote.index.urls[0] == f"{http_root}/synthetic/shard-000000.tar"
    for index in (0, 9, 10, 47, 3):
        _same_item(remote[index], local[index])
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 3 and all("shard-00000" in name for name in cached)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".part")]


def test_a_missing_remote_shard_or_index_is_one_line_naming_the_url(shards, http_root, tmp_path):
    with pytest.raises(ShardLocationError, match=r"/nowhere/index\.json: cannot read: HTTP 404"):
        ShardedDataset(f"{http_root}/nowhere")
    index = json.loads((shards / "index.json").read_text())
    index["shardlist"][1]["url"] = "gone.tar"
    folder = shards.parent / "broken"
    folder.mkdir(exist_ok=True)
    (folder / "index.json").write_text(json.dumps(index))
    broken = ShardedDataset(f"{http_root}/broken", cache_dir=tmp_path / "cache")
    with pytest.raises(ShardLocationError, match=r"broken/gone\.tar: download failed: HTTP 404"):
        broken[12]
    assert not list((tmp_path / "cache").glob("*gone*"))  # nothing that looks downloaded


def test_an_index_that_disagrees_with_its_shard_is_refused_by_name(shards, tmp_path):
    index = json.loads((shards / "index.json").read_text())
    index["shardlist"][0]["url"] = str(shards / shard_name(0))
    index["shardlist"][0]["nsamples"] = 11
    index["shardlist"] = index["shardlist"][:1]
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"shard-000000\.tar holds 10 samples but .* says 11"):
        ShardedDataset(tmp_path)[0]


def test_a_folder_that_is_not_a_shard_index_says_so(tmp_path):
    (tmp_path / "index.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match=r"not a realsynth shard index .*realsynth data convert"):
        ShardedDataset(tmp_path)


def test_data_check_on_clean_shards_passes_and_finds_a_bad_sample(shards, tmp_path, capsys):
    report = check_shards(str(shards))
    assert (report.exit_code, report.num_images) == (0, 48)
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("index.json", *(shard_name(k) for k in range(5))):
        (bad / name).write_bytes((shards / name).read_bytes())
    _rewrite_sample(bad / shard_name(1), "000000012.json", lambda ann: {**ann, "labels": [99]})
    report = check_shards(str(bad))
    codes = sorted({p.code for p in report.errors})
    assert report.exit_code == 1 and "bad_label" in codes
    assert any("shard-000001.tar/000000012" in p.location for p in report.errors)
    # One shard of five per check: some draws include the bad shard, others do not.
    found = {check_shards(str(bad), fraction=0.2, seed=seed).exit_code for seed in range(30)}
    assert found == {0, 1}
    assert main(["data", "check", str(bad), "--fraction", "1.5"]) == 2
    assert "--fraction must be in (0, 1]" in capsys.readouterr().err


def _rewrite_sample(shard: Path, member: str, change) -> None:
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            if info.name == member:
                ann = json.loads(data)
                ann = change(ann)
                ann["boxes"] = ann["boxes"][: len(ann["labels"])]
                ann["relations"] = []
                data = json.dumps(ann).encode()
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_data_convert_command_writes_shards_and_refuses_bad_input(demo_root, tmp_path, capsys):
    src = demo_root / "real" / "train" / "annotations.json"
    assert (
        main(["data", "convert", str(src), str(tmp_path / "out"), "--samples-per-shard", "8"]) == 0
    )
    assert "24 images in 3 shards (3 written now)" in capsys.readouterr().out
    assert len(ShardedDataset(tmp_path / "out")) == 24
    assert main(["data", "convert", str(tmp_path / "none.json"), str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.json does not exist" in err[0]


def test_training_from_a_url_equals_training_from_the_local_copy(
    demo_root, shards, http_root, tmp_path
):
    from tiny_runs import assert_same_records, tiny_config, train_records

    from realsynth.training.train import train

    real = demo_root / "real"
    runs = {}
    for name, location, workers in (
        ("local", shards, 0),
        ("url", f"{http_root}/synthetic", 2),  # and two loader workers downloading
    ):
        sources = (
            f"[{{NAME: real, TYPE: real, PATH: {real / 'train' / 'annotations.json'}, "
            f"VAL_PATH: {real / 'val' / 'annotations.json'}}}, "
            f"{{NAME: synthetic, TYPE: synthetic, FORMAT: shards, PATH: '{location}'}}]"
        )
        cfg = tiny_config(
            tmp_path / name,
            f"DATASETS.SOURCES={sources}",
            "SOLVER.MAX_ITER=4",
            "DATALOADER.SHARD_WINDOW=2",
            f"DATALOADER.NUM_WORKERS={workers}",
            f"DATALOADER.SHARD_CACHE={tmp_path / 'cache'}",
            demo_root=demo_root,
        )
        train(cfg)
        runs[name] = train_records(tmp_path / name / "run")
    assert len(runs["local"]) == 4
    assert_same_records(runs["url"], runs["local"])
    assert list((tmp_path / "cache").iterdir())  # the URL run read downloaded shards


def test_a_pass_in_shard_windows_opens_each_shard_once(shards):
    from realsynth.mixing.permutation import KeyedStream
    from realsynth.mixing.shard_windows import ShardWindowStream

    def misses(order) -> int:
        dataset = ShardedDataset(shards, open_shards=2)  # a window of 2 shards stays open
        for index in order.tolist():
            dataset.annotation(int(index))
        assert dataset.accesses == 48
        return dataset.misses

    windows = ShardWindowStream(ShardedDataset(shards).shard_sizes, window=2, seed=0, stream_id=1)
    assert misses(windows.take(0, 48)) == 5  # hit rate 1 - 5/48
    uniform = KeyedStream(48, seed=0, stream_id=1, replacement=False)
    assert misses(uniform.take(0, 48)) > 20  # the same cache thrashes under a uniform shuffle


def test_a_vg150_split_in_shards_reads_as_the_vg150_reader(tmp_path):
    from test_vg150 import build_vg_folder

    from realsynth.data.formats.vg150 import vg150_from_folder

    vg = build_vg_folder(tmp_path / "vg")
    # A file of another size than annotated: both readers rescale the boxes (VG150's rule).
    Image.new("RGB", (320, 240)).save(vg / "VG_100K" / "10.jpg")
    source = vg150_from_folder(vg, split="train", num_val_images=0, source="vg")
    convert_to_shards(source, tmp_path / "shards", samples_per_shard=2)
    sharded = ShardedDataset(tmp_path / "shards", source="vg")
    assert sharded.one_predicate_per_pair and sharded.rescale_on_size_mismatch
    for epoch in range(6):  # the duplicate filter's draw is the same per item and epoch
        for dataset in (source, sharded):
            dataset.set_epoch(epoch)
        for index in range(len(source)):
            _same_item(sharded[index], source[index])
