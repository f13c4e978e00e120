"""Procedural demo data: shapes with spatial and appearance relations, in a "real" and a
"synthetic" domain, written as relcoco (``OUT/{real,synthetic}/{train,val}/annotations.json`` with
PNGs in ``images/`` beside each file).

Each image is one scene of :mod:`realsynth.data.demo_scene` (2-4 shapes, spatial and "same color
as" relations), drawn from its own seed so that the same arguments give the same bytes.

The synthetic domain is damaged as :mod:`realsynth.data.demo_damage` says (by default the ``mild``
preset: each object class and each predicate replaced by a different, uniformly drawn one with
probability 0.1), and ``corruption.json`` beside its annotations records exactly how.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from realsynth.data.demo_damage import (
    SyntheticDamage,
    preset_name,
    resolve_damage,
    write_damage_record,
)
from realsynth.data.demo_scene import DEMO_CLASSES, DEMO_PREDICATES, make_scene
from realsynth.data.demo_settings import DEMO_SIZES
from realsynth.data.formats.relcoco import write_relcoco
from realsynth.utils.atomic import atomic_write_text

DOMAINS = ("real", "synthetic")
SPLITS = ("train", "val", "test")
#: Marks a folder written by :func:`generate_demo` (and whether it finished).
DEMO_MARKER = ".realsynth-demo"
#: What the demo cache of realsynth 0.1 wrote when complete (still recognized).
LEGACY_DEMO_MARKER = ".complete"
#: Beside a synthetic split's annotations.json: which labels the generator corrupted.
CORRUPTION_FILE = "corruption.json"


def demo_predicate_flip_map() -> dict[str, str]:
    """Predicate names swapped by a horizontal flip (for ``predicate_flip_indices``)."""
    return {"left of": "right of", "right of": "left of"}


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
