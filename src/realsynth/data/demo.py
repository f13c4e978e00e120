"""Procedural demo data: shapes with spatial and appearance relations, in a "real" and a
"synthetic" domain, written as relcoco (``OUT/{real,synthetic}/{train,val}/annotations.json`` with
PNGs in ``images/`` beside each file).

Scenes are built for learnability: 2-4 shapes (3 classes, 4 colors) that never overlap, each at
least ~19% of the image side. Every ordered pair (subject, object) gets at most one predicate:
"same color as" when the two share a palette color, otherwise a spatial predicate when one axis
clearly dominates the displacement (|d_major| >= 1.5 |d_minor|), otherwise none; at most
``MAX_RELATIONS`` per image, and every image has at least one. "left of" means the subject's
center is left of the object's.

The synthetic domain is damaged as :mod:`realsynth.data.demo_damage` says (by default the ``mild``
preset: each object class and each predicate replaced by a different, uniformly drawn one with
probability 0.1), and ``corruption.json`` beside its annotations records exactly how.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from realsynth.data.demo_damage import (
    SyntheticDamage,
    damaged_annotation,
    knob_rng,
    preset_name,
    resolve_damage,
    shifted_kinds,
    write_damage_record,
)
from realsynth.data.demo_render import (
    PALETTE,
    SHAPES,
    DemoObject,
    blend_toward,
    render_real,
    render_synthetic,
    rotate_hue,
)
from realsynth.data.demo_settings import DEMO_SIZES
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


def _scene_objects(
    domain: str,
    image_size: int,
    damage: SyntheticDamage,
    rng: np.random.Generator,
    scene_key: tuple[int, ...],
) -> tuple[list[DemoObject], np.ndarray]:
    """The scene's objects and its relations int64 [M, 3] (M >= 1), shifted kinds included."""
    shift = domain == "synthetic" and (damage.class_shift > 0 or damage.predicate_shift > 0)
    shift_rng = knob_rng(scene_key, "shift") if shift else None
    # Resample until the scene has a relation: images without one teach nothing and the
    # evaluation ignores them.
    objects, relations = [], np.zeros((0, 3), dtype=np.int64)
    while len(objects) < 2 or len(relations) == 0:
        objects = sample_objects(image_size, rng)
        if shift_rng is not None:
            shapes, colors = shifted_kinds(
                np.array([o.shape for o in objects], dtype=np.int64),
                np.array([o.color for o in objects], dtype=np.int64),
                len(SHAPES),
                len(PALETTE),
                damage,
                shift_rng,
            )
            objects = [
                replace(o, shape=int(s), color=int(c)) for o, s, c in zip(objects, shapes, colors)
            ]
        relations = scene_relations(objects, rng)
    return objects, relations


def _synthetic_image(
    objects: list[DemoObject], image_size: int, damage: SyntheticDamage, scene_key: tuple
) -> Any:
    """The synthetic rendering, moved toward the real one and hue-turned as ``damage`` says."""
    image = render_synthetic(objects, image_size)
    if damage.appearance_gap < 1.0:
        real = render_real(objects, image_size, knob_rng(scene_key, "appearance_gap"))
        image = blend_toward(image, real, damage.appearance_gap)
    if damage.hue_shift > 0:
        image = rotate_hue(image, damage.hue_shift)
    return image


def make_scene(
    domain: str,
    image_size: int,
    damage: SyntheticDamage,
    rng: np.random.Generator,
    scene_key: tuple[int, ...] = (),
) -> tuple[Any, dict[str, Any], dict[str, list] | None]:
    """Renders one scene.

    Args:
        domain: ``real`` or ``synthetic`` (only the synthetic one is damaged).
        image_size: the square image's side in pixels.
        damage: what to do to the synthetic domain.
        rng: the scene's stream (geometry, real rendering, wrong labels).
        scene_key: the scene's seed sequence, for the knobs' own streams.

    Returns:
        (PIL image, annotation with xyxy pixel boxes, 0-based labels and relations ready for
        :func:`write_relcoco`, the synthetic scene's record of what differs from the truth
        (None for a real scene; see :func:`damaged_annotation`)).
    """
    objects, relations = _scene_objects(domain, image_size, damage, rng, scene_key)
    labels = np.array([o.shape for o in objects], dtype=np.int64)
    boxes = np.array([o.box for o in objects], dtype=np.int64)
    frame = {"width": image_size, "height": image_size}
    if domain == "real":
        image = render_real(objects, image_size, rng)
        return image, {**frame, "boxes": boxes, "labels": labels, "relations": relations}, None
    image = _synthetic_image(objects, image_size, damage, scene_key)
    scene = {"boxes": boxes, "true_labels": labels, "true_predicates": relations[:, 2].copy()}
    scene["labels"], scene["changed_labels"] = _corrupt(
        labels, len(DEMO_CLASSES), damage.class_noise, rng
    )
    predicates, scene["changed_predicates"] = _corrupt(
        relations[:, 2], len(DEMO_PREDICATES), damage.predicate_noise, rng
    )
    scene["relations"] = np.column_stack([relations[:, :2], predicates])
    annotation, record = damaged_annotation(scene, damage, image_size, scene_key)
    return image, {**frame, **annotation}, record


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
    damage: SyntheticDamage | str = "mild",
    label_noise: float | None = None,
    image_size: int = 64,
) -> dict[str, Any]:
    """The settings :func:`generate_demo` records in its marker for these arguments (compare
    them with :func:`recorded_demo_settings` to tell whether a folder holds this demo)."""
    counts = _split_counts(real_train, real_val, synthetic_train, synthetic_val, real_test)
    settings: dict[str, Any] = {f"{d}_{s}": int(n) for (d, s), n in counts.items()}
    damage = resolve_damage(damage, label_noise)
    settings.update(seed=seed, image_size=image_size, preset=preset_name(damage))
    settings.update(damage.as_dict())
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
    damage: SyntheticDamage,
) -> Path:
    """Writes one split into a temporary sibling folder, then moves it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (tmp / "images").mkdir()
        records, per_image = [], []
        for k in range(count):
            scene_key = (seed, DOMAINS.index(domain), SPLITS.index(split), k)
            rng = np.random.default_rng(list(scene_key))
            image, ann, record = make_scene(domain, image_size, damage, rng, scene_key)
            ann["file_name"] = f"{k:06d}.png"
            image.save(tmp / "images" / ann["file_name"], format="PNG", compress_level=6)
            per_image.append(record)
            records.append(ann)
        write_relcoco(
            tmp / "annotations.json",
            classes=DEMO_CLASSES,
            predicates=DEMO_PREDICATES,
            images=records,
        )
        if domain == "synthetic":
            write_damage_record(tmp / CORRUPTION_FILE, records, per_image, damage)
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
    damage: SyntheticDamage | str = "mild",
    label_noise: float | None = None,
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
        damage: what to do to the synthetic domain: a preset's name (``mild``, ``noisy``,
            ``shifted``) or :class:`SyntheticDamage` knobs.
        label_noise: sets both ``class_noise`` and ``predicate_noise`` of ``damage`` (None:
            keep them).
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
    damage = resolve_damage(damage, label_noise)
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
        damage=damage,
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
            damage=damage,
        )
        for (domain, split), n in counts.items()
    }
    atomic_write_text(
        out / DEMO_MARKER, json.dumps({"complete": True, "settings": settings}) + "\n"
    )
    return paths
