"""Data pipeline benchmark: demo generation, DataLoader throughput, checks of 100k images.

Run: ``.venv/bin/python benchmarks/bench_data.py [--quick]``. Prints a markdown section and writes
it to ``benchmarks/results/data.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, write_result

from realsynth.data.check import check_dataset
from realsynth.data.collate import collate_relations
from realsynth.data.demo import demo_predicate_flip_map, generate_demo
from realsynth.data.demo_settings import DEMO_SIZES
from realsynth.data.formats.relcoco import RelCocoDataset
from realsynth.data.slot_loader import SlotDataLoader
from realsynth.data.transforms import build_transforms, predicate_flip_indices
from realsynth.utils.atomic import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "data.md"


def loader_throughput(
    ann_file: Path, workers: int, epochs: int, loader_class: type = SlotDataLoader
) -> float:
    """Images per second through ``loader_class`` + train transforms + collate_relations."""
    ds = RelCocoDataset(ann_file, ann_file.parent / "images", seed=0)
    flip = predicate_flip_indices(demo_predicate_flip_map(), ds.predicates)
    ds.transforms = build_transforms(
        train=True, min_sizes=[64], max_size=64, flip_prob=0.5, predicate_flip_map=flip
    )
    loader = loader_class(
        ds,
        batch_size=32,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_relations,
        persistent_workers=workers > 0,
    )
    for _ in loader:  # warm-up pass: worker start-up, file cache, slot buffers
        pass
    start, count = time.perf_counter(), 0
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader:
            count += batch["images"].shape[0]
    return count / (time.perf_counter() - start)


def write_big_relcoco(folder: Path, num_images: int) -> Path:
    """A relcoco file with 3 objects and 3 relations per image, plus empty image files."""
    rng = np.random.default_rng(0)
    images, anns, rels = [], [], []
    (folder / "images").mkdir(parents=True)
    xy = rng.integers(0, 400, size=(num_images, 3, 2)).tolist()
    for i in range(num_images):
        images.append({"id": i + 1, "file_name": f"{i:07d}.jpg", "width": 640, "height": 480})
        (folder / "images" / f"{i:07d}.jpg").touch()
        for j in range(3):
            anns.append(
                {
                    "id": 3 * i + j + 1,
                    "image_id": i + 1,
                    "category_id": j + 1,
                    "bbox": [*xy[i][j], 50, 40],
                }
            )
        for s, o in ((0, 1), (1, 2), (2, 0)):
            rels.append(
                {
                    "image_id": i + 1,
                    "subject_id": 3 * i + s + 1,
                    "object_id": 3 * i + o + 1,
                    "predicate_id": 1,
                }
            )
    data = {
        "images": images,
        "annotations": anns,
        "relationships": rels,
        "categories": [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)],
        "predicates": [{"id": 1, "name": "near"}],
    }
    return atomic_write_text(folder / "annotations.json", json.dumps(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller data, one epoch")
    args = parser.parse_args(argv)
    sizes = dict(DEMO_SIZES)
    if args.quick:
        sizes = {"real_train": 60, "real_val": 20, "synthetic_train": 300, "synthetic_val": 20}
    big = 10_000 if args.quick else 100_000
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = generate_demo(Path(tmp) / "demo", seed=0, **sizes)
        total = sum(sizes.values())
        rows.append(
            (f"generate_demo ({total} PNGs, 64x64)", f"{time.perf_counter() - start:.2f} s")
        )
        loaders = [
            ("SlotDataLoader (`train`'s)", SlotDataLoader, 0),
            ("SlotDataLoader (`train`'s)", SlotDataLoader, 2),
            ("torch DataLoader", torch.utils.data.DataLoader, 2),
        ]
        for name, loader_class, workers in loaders:
            rate = loader_throughput(
                paths["synthetic/train"], workers, 1 if args.quick else 2, loader_class
            )
            rows.append(
                (
                    f"{name}, synthetic/train, batch 32, {workers} workers",
                    f"{rate:,.0f} images/s",
                )
            )
        start = time.perf_counter()
        report = check_dataset(paths["synthetic/train"])
        rows.append(
            (
                f"data check, demo synthetic/train ({report.num_images} images, content read)",
                f"{time.perf_counter() - start:.2f} s",
            )
        )
        ann = write_big_relcoco(Path(tmp) / "big", big)
        start = time.perf_counter()
        report = check_dataset(ann, check_image_content=False)
        elapsed = time.perf_counter() - start
        if report.num_images != big or report.errors:
            raise RuntimeError(f"unexpected check result on the generated file: {report.to_dict()}")
        rows.append(
            (
                f"data check, {big:,}-image relcoco ({3 * big:,} boxes), existence only",
                f"{elapsed:.2f} s",
            )
        )
        # What `train` does at start-up for every source: the same rules, files by existence.
        start = time.perf_counter()
        dataset = RelCocoDataset(ann, ann.parent / "images")
        elapsed = time.perf_counter() - start
        if len(dataset) != big:
            raise RuntimeError(f"expected {big} images, the dataset has {len(dataset)}")
        rows.append(
            (
                f"train start-up checks, {big:,}-image relcoco source (rules + file existence)",
                f"{elapsed:.2f} s",
            )
        )
    lines = [
        "## Data pipeline",
        "",
        f"Machine: {machine()}",
        f"Command: `python benchmarks/bench_data.py{' --quick' if args.quick else ''}`",
        "",
        "| measurement | result |",
        "| --- | --- |",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    write_result("data", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
