"""Procedural demo data: shapes with spatial and appearance relations, in a "real" and a
"synthetic" domain, written as relcoco (``OUT/{real,synthetic}/{train,val}/annotations.json`` with
PNGs in ``images/`` beside each file).

Scenes are built for learnability: 2-4 shapes (3 classes, 4 colors) that never overlap, each at
least ~19% of the image side. Every ordered pair (subject, object) gets at most one predicate:
"same color as" when the two share a palette color, otherwise a spatial predicate when one axis
clearly dominates the displacement (|d_major| >= 1.5 |d_minor|), otherwise none; at most
``MAX_RELATIONS`` per image, and every image has at least one. "left of" means the subject's
center is left of the object's.

The synthetic domain carries label noise: each object class and each predicate is replaced by a
different, uniformly drawn one with probability ``label_noise``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from realsynth.data.demo_render import PALETTE, SHAPES, DemoObject, render_real, render_synthetic
from realsynth.data.demo_settings import DEMO_LABEL_NOISE, DEMO_SIZES
from realsynth.data.formats.relcoco import write_relcoco
from realsynth.utils.atomic import atomic_write_text

DEMO_CLASSES = SHAPES
DEMO_PREDICATES = ("left of", "right of", "above", "below", "same color as")
DOMAINS = ("real", "synthetic")
SPLITS = ("train", "val", "test")
MAX_RELATIONS = 8
#: Marks a folder written by :func:`generate_demo` (and whether it finished).
DEMO_MARKER = ".realsynth-demo"
#: What the demo cache of realsynth 0.1 wrote when complete (still recognized).
LEGACY_DEMO_MARKER = ".complete"
DOMINANCE = 1.5
#: Beside a synthetic split's annotations.json: which labels the generator corrupted.
CORRUPTION_FILE = "corruption.json"


def demo_predicate_flip_map() -> dict[str, str]:
    """Predicate names swapped by a horizontal flip (for ``predicate_flip_indices``)."""
    return {"left of": "right of", "right of": "left of"}


def sample_objects(image_size: int, rng: np.random.Generator) -> list[DemoObject]:
    """2-4 non-overlapping shapes (2 px apart at least) with random class and color."""
    low, high = max(4, round(0.19 * image_size)), max(5, round(0.28 * image_size))
    wanted = int(rng.integers(2, 5))
    objects: list[DemoObject] = []
    for _ in range(wanted * 20):
        if len(objects) == wanted:
            break
        size = int(rng.integers(low, high + 1))
        x0, y0 = (int(v) for v in rng.integers(1, image_size - size, size=2))
        clear = all(
            x0 + size + 2 <= o.x0
            or o.x0 + o.size + 2 <= x0
            or y0 + size + 2 <= o.y0
            or o.y0 + o.size + 2 <= y0
            for o in objects
        )
        if clear:
            shape, color = int(rng.integers(len(SHAPES))), int(rng.integers(len(PALETTE)))
            objects.append(DemoObject(shape, color, x0, y0, size))
    return objects


def pair_predicate(subject: DemoObject, obj: DemoObject) -> int | None:
    """0-based predicate of (subject, object) or None when no relation is annotated."""
    if subject.color == obj.color:
        return DEMO_PREDICATES.index("same color as")
    dx = (obj.x0 + obj.size / 2) - (subject.x0 + subject.size / 2)
    dy = (obj.y0 + obj.size / 2) - (subject.y0 + subject.size / 2)
    if abs(dx) >= DOMINANCE * abs(dy):
        return DEMO_PREDICATES.index("left of" if dx > 0 else "right of")
    if abs(dy) >= DOMINANCE * abs(dx):
        return DEMO_PREDICATES.index("above" if dy > 0 else "below")
    return None


def scene_relations(objects: list[DemoObject], rng: np.random.Generator) -> np.ndarray:
    """int64 [M, 3] (subject, object, predicate), M <= MAX_RELATIONS, in pair order."""
    rels = [
        (i, j, p)
        for i, a in enumerate(objects)
        for j, b in enumerate(objects)
        if i != j and (p := pair_predicate(a, b)) is not None
    ]
    if len(rels) > MAX_RELATIONS:
        keep = np.sort(rng.choice(len(rels), size=MAX_RELATIONS, replace=False))
        rels = [rels[k] for k in keep]
    return np.array(rels, dtype=np.int64).reshape(-1, 3)


def _corrupt(
    values: np.ndarray, num_values: int, rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Replaces each value, with probability ``rate``, by a different uniformly drawn one.

    Returns:
        (the values as written, bool mask of the replaced ones).
    """
    flip = rng.random(len(values)) < rate
    shift = rng.integers(1, num_values, size=len(values))
    return np.where(flip, (values + shift) % num_values, values), flip


def make_scene(
    domain: str, image_size: int, label_noise: float, rng: np.random.Generator
) -> tuple[Any, dict[str, Any]]:
    """Renders one scene. Returns (PIL image, annotation with xyxy pixel boxes, 0-based labels
    and relations) ready for :func:`write_relcoco`."""
    # Resample until the scene has a relation: images without one teach nothing and the
    # evaluation ignores them.
    objects, relations = [], np.zeros((0, 3), dtype=np.int64)
    while len(objects) < 2 or len(relations) == 0:
        objects = sample_objects(image_size, rng)
        relations = scene_relations(objects, rng)
    labels = np.array([o.shape for o in objects], dtype=np.int64)
    truth = {"labels": labels.copy(), "predicates": relations[:, 2].copy()}
    corrupted = {
        "labels": np.zeros(len(labels), bool),
        "predicates": np.zeros(len(relations), bool),
    }
    if domain == "real":
        image = render_real(objects, image_size, rng)
    else:
        image = render_synthetic(objects, image_size)
        labels, corrupted["labels"] = _corrupt(labels, len(DEMO_CLASSES), label_noise, rng)
        relations[:, 2], corrupted["predicates"] = _corrupt(
            relations[:, 2], len(DEMO_PREDICATES), label_noise, rng
        )
    ann = {
        "width": image_size,
        "height": image_size,
        "boxes": np.array([o.box for o in objects], dtype=np.int64),
        "labels": labels,
        "relations": relations,
        # What the generator changed: never written into annotations.json (see _write_split).
        "corrupted": corrupted,
        "truth": truth,
    }
    return image, ann


def _write_corruption(path: Path, records: list[dict], corruption: list[tuple]) -> None:
    """The ground truth of the label noise, by the ids ``write_relcoco`` assigns (annotations
    1, 2, ... and relationships in file order): which were changed, from what to what."""
    boxes, relations = [], []
    box_id, rel_position = 1, 0
    for ann, (changed, truth) in zip(records, corruption):
        for j in range(len(ann["labels"])):
            if changed["labels"][j]:
                true, written = int(truth["labels"][j]), int(ann["labels"][j])
                boxes.append({"annotation_id": box_id + j, "true": true, "written": written})
        for j in range(len(ann["relations"])):
            if changed["predicates"][j]:
                true, written = int(truth["predicates"][j]), int(ann["relations"][j, 2])
                relations.append(
                    {"relationship": rel_position + j, "true": true, "written": written}
                )
        box_id += len(ann["labels"])
        rel_position += len(ann["relations"])
    atomic_write_text(
        path,
        json.dumps(
            {
                "about": "labels the demo generator replaced (0-based class / predicate "
                "indices); a filter must never read this file",
                "boxes": boxes,
                "relationships": relations,
            }
        )
        + "\n",
    )


def _claim_folder(out: Path, settings: dict[str, Any], *, force: bool) -> None:
    """Refuse a non-empty folder that an earlier ``generate_demo`` did not make; mark it ours."""
    if out.exists() and any(out.iterdir()) and not is_demo_folder(out) and not force:
        raise ValueError(
            f"{out} is not empty and was not made by `realsynth data demo`; choose an empty "
            "folder, or pass --force (generate_demo(..., force=True)) to replace its real/ and "
            "synthetic/ folders"
        )
    atomic_write_text(
        out / DEMO_MARKER, json.dumps({"complete": False, "settings": settings}) + "\n"
    )
    (out / LEGACY_DEMO_MARKER).unlink(missing_ok=True)


def demo_settings(
    *,
    seed: int = 0,
    real_train: int = DEMO_SIZES["real_train"],
    real_val: int = DEMO_SIZES["real_val"],
    synthetic_train: int = DEMO_SIZES["synthetic_train"],
    synthetic_val: int = DEMO_SIZES["synthetic_val"],
    real_test: int = DEMO_SIZES["real_test"],
    label_noise: float = DEMO_LABEL_NOISE,
    image_size: int = 64,
) -> dict[str, Any]:
    """The settings :func:`generate_demo` records in its marker for these arguments (compare
    them with :func:`recorded_demo_settings` to tell whether a folder holds this demo)."""
    counts = _split_counts(real_train, real_val, synthetic_train, synthetic_val, real_test)
    settings: dict[str, Any] = {f"{d}_{s}": int(n) for (d, s), n in counts.items()}
    settings.update(seed=seed, label_noise=label_noise, image_size=image_size)
    return settings


def _split_counts(
    real_train: int, real_val: int, synthetic_train: int, synthetic_val: int, real_test: int
) -> dict[tuple[str, str], int]:
    """Images per (domain, split); the real test split only when asked for."""
    counts = {
        ("real", "train"): real_train,
        ("real", "val"): real_val,
        ("synthetic", "train"): synthetic_train,
        ("synthetic", "val"): synthetic_val,
    }
    if real_test:
        counts[("real", "test")] = real_test
    return counts


def is_demo_folder(out: str | Path) -> bool:
    """Whether ``out`` was made by :func:`generate_demo` (finished or not)."""
    return (Path(out) / DEMO_MARKER).exists() or (Path(out) / LEGACY_DEMO_MARKER).exists()


def recorded_demo_settings(out: str | Path) -> dict[str, Any] | None:
    """The settings ``generate_demo`` recorded in ``out`` (None: not a demo folder, or one of
    realsynth 0.1, which recorded none)."""
    try:
        settings = json.loads((Path(out) / DEMO_MARKER).read_text()).get("settings")
    except (OSError, ValueError, AttributeError):
        return None
    return settings if isinstance(settings, dict) else None


def demo_is_complete(out: str | Path) -> bool:
    """Whether ``out`` holds a finished ``generate_demo`` output."""
    if (Path(out) / LEGACY_DEMO_MARKER).exists():
        return True
    try:
        return bool(json.loads((Path(out) / DEMO_MARKER).read_text()).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


def _write_split(
    folder: Path,
    domain: str,
    split: str,
    count: int,
    *,
    seed: int,
    image_size: int,
    label_noise: float,
) -> Path:
    """Writes one split into a temporary sibling folder, then moves it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (tmp / "images").mkdir()
        records, corruption = [], []
        for k in range(count):
            rng = np.random.default_rng([seed, DOMAINS.index(domain), SPLITS.index(split), k])
            image, ann = make_scene(domain, image_size, label_noise, rng)
            ann["file_name"] = f"{k:06d}.png"
            image.save(tmp / "images" / ann["file_name"], format="PNG", compress_level=6)
            corruption.append((ann.pop("corrupted"), ann.pop("truth")))
            records.append(ann)
        write_relcoco(
            tmp / "annotations.json",
            classes=DEMO_CLASSES,
            predicates=DEMO_PREDICATES,
            images=records,
        )
        if domain == "synthetic":
            _write_corruption(tmp / CORRUPTION_FILE, records, corruption)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.replace(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder / "annotations.json"


def generate_demo(
    out_dir: str | Path,
    *,
    seed: int = 0,
    real_train: int = DEMO_SIZES["real_train"],
    real_val: int = DEMO_SIZES["real_val"],
    synthetic_train: int = DEMO_SIZES["synthetic_train"],
    synthetic_val: int = DEMO_SIZES["synthetic_val"],
    real_test: int = DEMO_SIZES["real_test"],
    label_noise: float = DEMO_LABEL_NOISE,
    image_size: int = 64,
    force: bool = False,
) -> dict[str, Path]:
    """Writes the demo data set; the same arguments give byte-identical files.

    Args:
        out_dir: output folder (``real/`` and ``synthetic/`` are created or replaced in it). A
            non-empty folder is refused unless an earlier call made it (the ``.realsynth-demo``
            marker says so) or ``force`` is set.
        seed: base seed; image k of (domain, split) uses ``default_rng([seed, d, s, k])``.
        real_train, real_val, synthetic_train, synthetic_val, real_test: image counts (>= 0);
            the real test split is for reports that model selection never saw (0: none, and
            the test split of an earlier call is removed).
        label_noise: synthetic class/predicate noise rate in [0, 1].
        image_size: square image side in pixels (>= 24).
        force: replace ``real/`` and ``synthetic/`` in a folder this function did not make.

    Returns:
        ``{"real/train": path to annotations.json, "real/val": ..., "synthetic/train": ...,
        "synthetic/val": ..., "real/test": ...}`` (``real/test`` only when ``real_test > 0``).
    """
    counts = _split_counts(real_train, real_val, synthetic_train, synthetic_val, real_test)
    for (domain, split), n in counts.items():
        if int(n) < 0:
            raise ValueError(f"{domain}_{split} must be >= 0, got {n}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    if image_size < 24:
        raise ValueError(f"image_size must be >= 24 pixels, got {image_size}")
    out = Path(out_dir)
    settings = demo_settings(
        seed=seed,
        real_train=real_train,
        real_val=real_val,
        synthetic_train=synthetic_train,
        synthetic_val=synthetic_val,
        real_test=real_test,
        label_noise=label_noise,
        image_size=image_size,
    )
    _claim_folder(out, settings, force=force)
    if not real_test:  # a test split of an earlier call would pass for this one's
        shutil.rmtree(out / "real" / "test", ignore_errors=True)
    paths = {
        f"{domain}/{split}": _write_split(
            out / domain / split,
            domain,
            split,
            int(n),
            seed=seed,
            image_size=image_size,
            label_noise=label_noise,
        )
        for (domain, split), n in counts.items()
    }
    atomic_write_text(
        out / DEMO_MARKER, json.dumps({"complete": True, "settings": settings}) + "\n"
    )
    return paths
