"""A relcoco dataset of VG150's sizes for loader and GPU benchmarks: 640x480 JPEG photographs'
size and compression, VG150's 150 classes and 50 predicates, 8 boxes and 12 relationships per
image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from realsynth.utils.atomic import atomic_write_text

CLASSES, PREDICATES, BOXES, RELATIONS = 150, 50, 8, 12


def _image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth random colour fields with noise: JPEG files of a photograph's size (~60-90 KB)."""
    coarse = rng.integers(0, 256, size=(height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    noise = rng.integers(-24, 25, size=base.shape)
    return Image.fromarray(np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8))


def write_vg_sized_relcoco(folder: Path, num_images: int, seed: int = 0) -> Path:
    """Write ``folder/images/*.jpg`` and ``folder/annotations.json``; returns the latter."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, anns, rels = [], [], []
    for i in range(num_images):
        width, height = (640, 480) if i % 4 else (480, 640)  # some portrait images, as VG has
        name = f"{i:07d}.jpg"
        _image(rng, width, height).save(folder / "images" / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
        first = len(anns) + 1
        for j in range(BOXES):
            w, h = rng.integers(40, width // 2), rng.integers(40, height // 2)
            x, y = rng.integers(0, width - w), rng.integers(0, height - h)
            category = int(rng.integers(1, CLASSES + 1))
            box = [int(x), int(y), int(w), int(h)]
            anns.append({"id": first + j, "image_id": i + 1, "category_id": category, "bbox": box})
        pairs = rng.choice(BOXES * (BOXES - 1), size=RELATIONS, replace=False)
        for pair in pairs.tolist():
            s, o = divmod(pair, BOXES - 1)
            o += o >= s  # every ordered pair of distinct boxes once
            predicate = int(rng.integers(1, PREDICATES + 1))
            rels.append(
                {
                    "image_id": i + 1,
                    "subject_id": first + s,
                    "object_id": first + o,
                    "predicate_id": predicate,
                }
            )
    data = {
        "images": images,
        "annotations": anns,
        "relationships": rels,
        "categories": [{"id": k, "name": f"class{k}"} for k in range(1, CLASSES + 1)],
        "predicates": [{"id": k, "name": f"predicate{k}"} for k in range(1, PREDICATES + 1)],
    }
    return atomic_write_text(folder / "annotations.json", json.dumps(data))
