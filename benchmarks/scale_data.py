"""The data of the scale benchmark and the loaders it compares.

A relcoco file of N images, written as text 10^4 images at a time (about 5 s and 150 MB per
10^5 images), whose image files are hard links to one 640x480 JPEG (the size the annotations
give, so that `train` can read them); a shard ``index.json`` of N
images with no tar files behind it; VG150-sized JPEGs and their shards; and the loader variants:
realsynth's relcoco (uint8 or float32 items), its shards, and WebDataset's own pipeline.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from vg_sized import write_vg_sized_relcoco

from realsynth.data.collate import collate_relations
from realsynth.data.formats.relcoco import RelCocoDataset
from realsynth.data.shards.convert import convert_to_shards, shard_name
from realsynth.data.shards.dataset import ShardedDataset
from realsynth.data.shards.shard_index import write_shard_index
from realsynth.data.transforms import build_transforms, finalize_item, item_rng

CLASSES, PREDICATES, BOXES, RELATIONS, PER_SHARD = 150, 50, 8, 12, 1000
LINKS_PER_INODE = 50_000  # ext4 allows 65,000 hard links to one file
_CHUNK = 10_000
_IMAGE = '{"id":%d,"file_name":"%08d.jpg","width":640,"height":480}'
_ANNS = ",".join(['{"id":%d,"image_id":%d,"category_id":%d,"bbox":[%d,%d,%d,%d]}'] * BOXES)
_RELS = ",".join(['{"image_id":%d,"subject_id":%d,"object_id":%d,"predicate_id":%d}'] * RELATIONS)


def _ann_rows(ids: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
    """One row per image: (id, image_id, category_id, x, y, w, h) of its 8 boxes, flattened."""
    shape = (len(ids), BOXES)
    w, h = rng.integers(40, 320, size=shape), rng.integers(40, 240, size=shape)
    x = (rng.random(shape) * (640 - w)).astype(np.int64)
    y = (rng.random(shape) * (480 - h)).astype(np.int64)
    ann_id = ids[:, None] * BOXES + np.arange(BOXES) + 1
    image_id = np.broadcast_to(ids[:, None] + 1, shape)
    category = rng.integers(1, CLASSES + 1, size=shape)
    return (
        np.stack([ann_id, image_id, category, x, y, w, h], axis=-1).reshape(len(ids), -1).tolist()
    )


def _rel_rows(ids: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
    """One row per image: (image_id, subject_id, object_id, predicate_id) of 12 distinct pairs."""
    pairs = rng.random((len(ids), BOXES * (BOXES - 1))).argsort(axis=1)[:, :RELATIONS]
    s, o = np.divmod(pairs, BOXES - 1)
    o += o >= s  # every ordered pair of distinct boxes once
    first = ids[:, None] * BOXES + 1
    image_id = np.broadcast_to(ids[:, None] + 1, s.shape)
    predicate = rng.integers(1, PREDICATES + 1, size=s.shape)
    rows = np.stack([image_id, first + s, first + o, predicate], axis=-1)
    return rows.reshape(len(ids), -1).tolist()


def _write_rows(f: io.TextIOBase, n: int, template: str, rows_of: Callable[..., list]) -> None:
    """Writes ``template % row`` for every image, comma separated, 10^4 images at a time."""
    for start in range(0, n, _CHUNK):
        ids = np.arange(start, min(n, start + _CHUNK), dtype=np.int64)
        f.write(("," if start else "") + ",".join([template % tuple(r) for r in rows_of(ids)]))


def write_synthetic_relcoco(folder: Path, n: int) -> Path:
    """``folder/annotations.json`` (8 boxes in 640x480, 12 relationships per image, 150
    classes, 50 predicates) and ``folder/images/*.jpg``: hard links to one 640x480 JPEG."""
    rng = np.random.default_rng(0)
    path = folder / "annotations.json"
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"images":[')
        _write_rows(f, n, _IMAGE, lambda ids: np.stack([ids + 1, ids], axis=-1).tolist())
        f.write('],"annotations":[')
        _write_rows(f, n, _ANNS, lambda ids: _ann_rows(ids, rng))
        f.write('],"relationships":[')
        _write_rows(f, n, _RELS, lambda ids: _rel_rows(ids, rng))
        labels = {
            "categories": [{"id": k, "name": f"class{k}"} for k in range(1, CLASSES + 1)],
            "predicates": [{"id": k, "name": f"predicate{k}"} for k in range(1, PREDICATES + 1)],
        }
        f.write("]," + json.dumps(labels, separators=(",", ":"))[1:])
    images = folder / "images"
    images.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (120, 80, 40)).save(buffer, format="JPEG")
    for i in range(n):
        if i % LINKS_PER_INODE == 0:
            original = folder / f"tiny-{i // LINKS_PER_INODE}.jpg"
            original.write_bytes(buffer.getvalue())
        os.link(original, images / f"{i:08d}.jpg")
    return path


def write_count_index(folder: Path, n: int) -> Path:
    """A shard ``index.json`` for ``n`` images in shards of 1000: counts only, no tar files."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = [
        {"url": shard_name(k), "nsamples": min(PER_SHARD, n - k * PER_SHARD), "filesize": 0}
        for k in range(-(-n // PER_SHARD))
    ]
    return write_shard_index(
        folder,
        shards,
        name=folder.name,
        classes=[f"class{k}" for k in range(CLASSES)],
        predicates=[f"predicate{k}" for k in range(PREDICATES)],
        object_counts=np.full(CLASSES, n * BOXES // CLASSES, dtype=np.int64),
        relation_counts=np.full(PREDICATES, n * RELATIONS // PREDICATES, dtype=np.int64),
        rescale_on_size_mismatch=False,
        converted_from={"format": "synthetic"},
    )


def collate_per_image(items: list[Any]) -> dict[str, Any]:
    """How batches travelled before TargetList: targets a plain list, pickled image by image."""
    batch = collate_relations(items)
    batch["targets"] = list(batch["targets"])
    return batch


def _train_transforms(uint8: bool) -> Any:
    """VG150's train transforms, ending in uint8 or float32 (normalized either way)."""
    return build_transforms(
        train=True,
        min_sizes=[480, 512, 544, 576, 608, 640],
        max_size=1000,
        normalize=True,
        uint8=uint8,
    )


class WebDatasetItem:
    """A WebDataset sample (PIL image, annotation dict) made into the item realsynth makes:
    the same transforms, seeded the same way, and the same final item."""

    def __init__(self) -> None:
        """The uint8 train transforms, as the realsynth uint8 variants use."""
        self.transforms = _train_transforms(uint8=True)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """The item of a decoded sample (``jpg`` a PIL image, ``json`` a dict)."""
        image, ann = sample["jpg"], sample["json"]
        boxes = torch.tensor(ann["boxes"], dtype=torch.float32).reshape(-1, 4)
        size = torch.tensor([ann["height"], ann["width"]], dtype=torch.int64)
        target = {
            "boxes": boxes,
            "labels": torch.tensor(ann["labels"], dtype=torch.int64),
            "relations": torch.tensor(ann["relations"], dtype=torch.int64).reshape(-1, 3),
            "image_id": int(ann["image_id"]),
            "orig_size": size,
            "file_name": ann["file_name"],
            "source": "webdataset",
            "eval_boxes": boxes.clone(),
            "eval_size": size.clone(),
        }
        rng = item_rng(0, 0, int(sample["__key__"]))
        return finalize_item(*self.transforms(image, target, rng))


def loader_dataset(variant: str, folder: Path) -> tuple[Any, Callable[..., dict[str, Any]]]:
    """(dataset, collate_fn) of a loader variant over ``folder`` (annotations.json, shards/)."""
    if variant in ("slots", "uint8", "float"):
        dataset = RelCocoDataset(
            folder / "annotations.json",
            folder / "images",
            transforms=_train_transforms(uint8=variant != "float"),
        )
        return dataset, collate_per_image if variant == "float" else collate_relations
    if variant == "shards":
        return ShardedDataset(
            folder / "shards", transforms=_train_transforms(True)
        ), collate_relations
    import webdataset as wds

    urls = sorted(str(p) for p in (folder / "shards").glob("shard-*.tar"))
    dataset = wds.WebDataset(urls, shardshuffle=False).decode("pil").map(WebDatasetItem())
    return dataset, collate_relations


def vg_folder(folder: Path, num_images: int) -> Path:
    """VG150-sized relcoco images and their shards (8 shards, so every worker gets some)."""
    ann = write_vg_sized_relcoco(folder, num_images)
    dataset = RelCocoDataset(ann, folder / "images")
    convert_to_shards(dataset, folder / "shards", samples_per_shard=max(1, num_images // 8))
    return folder


GROWTH_BATCH = 2000


def private_dirty_mb() -> float:
    """This process's private dirty memory (pages it wrote, its own after a fork), in MB."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class NameTouch(torch.utils.data.Dataset):
    """Reads every item's annotation and file name, and returns the worker's private dirty MB:
    how much of the parent's memory a forked worker copies by touching it. ``as_list`` keeps
    the names as a Python list (how RelCocoDataset held them before they were packed)."""

    def __init__(self, dataset: RelCocoDataset, as_list: bool) -> None:
        self.dataset = dataset
        self.names = [dataset.file_name(i) for i in range(len(dataset))] if as_list else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> float:
        name = self.names[index] if self.names is not None else self.dataset.file_name(index)
        self.dataset.annotation(index)
        # Reading smaps costs milliseconds: only at the ends of a batch of GROWTH_BATCH.
        edge = index % GROWTH_BATCH in (0, GROWTH_BATCH - 1)
        return private_dirty_mb() if edge and name else 0.0
