"""The damage the demo generator does to its synthetic domain, and the three named presets.

Real synthetic data goes wrong in a few typical ways; each has a knob here, all in the synthetic
domain only (the real domain is never damaged):

- ``class_noise`` / ``predicate_noise``: a share of object classes / predicates replaced by a
  different, uniformly drawn one (wrong labels);
- ``missing_objects``: a share of the objects drawn in the image but not annotated (with them,
  every relation they take part in);
- ``missing_relations``: a share of the relations that hold but are not listed;
- ``box_noise``: every annotated box's corners moved by up to this share of the object's side;
- ``class_shift`` / ``predicate_shift``: label frequencies unlike the real ones (the labels stay
  right): object classes drawn from a mixture of the uniform distribution and one class,
  colors likewise, which makes "same color as" far more frequent;
- ``appearance_gap``: 1 is the flat, clean rendering; 0 renders like the real domain (texture,
  jitter, clutter, lighting, blur, noise); in between, a pixel blend of the two;
- ``hue_shift``: degrees by which the synthetic image's hues are rotated (a strong style gap the
  real domain never shows).

Every knob draws from its own random stream (:func:`knob_rng`), so turning one on changes what it
claims and nothing else: the same scenes, the same other labels, the same pixels where it does
not act. The wrong-label knobs draw from the scene's stream exactly as the demo always did, which
keeps the ``mild`` preset's files byte-identical to earlier releases.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from realsynth.data.demo_settings import DEMO_PRESET_CHANGES
from realsynth.utils.atomic import atomic_write_text

__all__ = [
    "DEMO_PRESETS",
    "SyntheticDamage",
    "damaged_annotation",
    "demo_damage",
    "knob_rng",
    "preset_name",
    "resolve_damage",
    "shifted_kinds",
    "write_damage_record",
]


@dataclass(frozen=True)
class SyntheticDamage:
    """What the demo generator does to the synthetic domain (see the module docstring).

    Shares are in [0, 1]; ``hue_shift`` is in degrees, [0, 360).
    """

    class_noise: float = 0.1
    predicate_noise: float = 0.1
    missing_objects: float = 0.0
    missing_relations: float = 0.0
    box_noise: float = 0.0
    class_shift: float = 0.0
    predicate_shift: float = 0.0
    appearance_gap: float = 1.0
    hue_shift: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            hue = f.name == "hue_shift"
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not (0.0 <= value < 360.0 if hue else 0.0 <= value <= 1.0):
                bound = "[0, 360) degrees" if hue else "[0, 1]"
                raise ValueError(f"demo damage {f.name} must be in {bound}, got {value!r}")

    def as_dict(self) -> dict[str, float]:
        """The knobs by name (floats), as recorded in the demo marker and corruption.json."""
        return {k: float(v) for k, v in asdict(self).items()}


#: The named presets (their settings: ``DEMO_PRESET_CHANGES`` in demo_settings).
DEMO_PRESETS: dict[str, SyntheticDamage] = {
    name: SyntheticDamage(**changes) for name, changes in DEMO_PRESET_CHANGES.items()
}


def demo_damage(
    preset: str = "mild",
    *,
    label_noise: float | None = None,
    overrides: Mapping[str, float | None] | None = None,
) -> SyntheticDamage:
    """A preset with some knobs set.

    Args:
        preset: ``mild``, ``noisy`` or ``shifted``.
        label_noise: sets both ``class_noise`` and ``predicate_noise`` (None: the preset's);
            an explicit ``class_noise`` or ``predicate_noise`` in ``overrides`` wins.
        overrides: knob name -> value; None values keep the preset's.

    Raises:
        ValueError: an unknown preset or knob, or a value out of its range.
    """
    if preset not in DEMO_PRESETS:
        raise ValueError(f"unknown demo preset {preset!r}; choose one of {sorted(DEMO_PRESETS)}")
    chosen: dict[str, float] = {}
    if label_noise is not None:
        chosen.update(class_noise=label_noise, predicate_noise=label_noise)
    known = {f.name for f in fields(SyntheticDamage)}
    for name, value in (overrides or {}).items():
        if name not in known:
            raise ValueError(f"unknown demo damage knob {name!r}; known: {sorted(known)}")
        if value is not None:
            chosen[name] = float(value)
    return replace(DEMO_PRESETS[preset], **chosen)


#: Stream numbers of the knobs that draw from their own generator (see :func:`knob_rng`).
_KNOB_STREAMS = {
    "missing_objects": 1,
    "missing_relations": 2,
    "box_noise": 3,
    "shift": 4,
    "appearance_gap": 5,
}


def knob_rng(scene_key: tuple[int, ...], knob: str) -> np.random.Generator:
    """The random stream of one knob for one scene.

    Args:
        scene_key: the scene's seed sequence (base seed, domain, split, image index).
        knob: one of ``missing_objects``, ``missing_relations``, ``box_noise``, ``shift``,
            ``appearance_gap``.
    """
    return np.random.default_rng([*scene_key, 1000 + _KNOB_STREAMS[knob]])


def resolve_damage(damage: SyntheticDamage | str, label_noise: float | None) -> SyntheticDamage:
    """``damage`` (a preset's name or knobs) with ``label_noise``, when given, as both its
    class and its predicate noise."""
    if isinstance(damage, str):
        return demo_damage(damage, label_noise=label_noise)
    if label_noise is None:
        return damage
    return replace(damage, class_noise=label_noise, predicate_noise=label_noise)


def preset_name(damage: SyntheticDamage) -> str:
    """The name of the preset with exactly these knobs, or ``custom``."""
    return next((name for name, knobs in DEMO_PRESETS.items() if knobs == damage), "custom")


def _mixture_draw(u: np.ndarray, num_values: int, shift: float) -> np.ndarray:
    """Values drawn by inverse CDF from ``(1 - shift) * uniform + shift * one-hot(0)``.

    Args:
        u: float [N] uniform draws in [0, 1).
        num_values: V.
        shift: weight of value 0's point mass.

    Returns:
        int64 [N] values in ``0 .. V - 1``.
    """
    probs = np.full(num_values, (1.0 - shift) / num_values)
    probs[0] += shift
    return np.minimum(np.searchsorted(np.cumsum(probs), u, side="right"), num_values - 1)


def shifted_kinds(
    shapes: np.ndarray,
    colors: np.ndarray,
    num_shapes: int,
    num_colors: int,
    damage: SyntheticDamage,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Shapes and colors redrawn from the shifted frequencies (kept where a shift is 0).

    Args:
        shapes, colors: int64 [N] the scene's uniform draws.
        num_shapes, num_colors: how many there are.
        damage: ``class_shift`` moves shapes toward shape 0, ``predicate_shift`` colors toward
            color 0 (more pairs of one color: more "same color as").
        rng: the scene's ``shift`` stream (two draws per object, whatever the settings).

    Returns:
        (shapes, colors), int64 [N] each.
    """
    u_shape, u_color = rng.random(len(shapes)), rng.random(len(colors))
    if damage.class_shift > 0:
        shapes = _mixture_draw(u_shape, num_shapes, damage.class_shift)
    if damage.predicate_shift > 0:
        colors = _mixture_draw(u_color, num_colors, damage.predicate_shift)
    return shapes, colors


def _missing_objects(
    relations: np.ndarray, num_objects: int, share: float, rng: np.random.Generator
) -> np.ndarray:
    """bool [N]: objects left unannotated; at least one relation keeps both its objects."""
    missing = rng.random(num_objects) < share
    kept = ~missing[relations[:, 0]] & ~missing[relations[:, 1]]
    if len(relations) and not kept.any():
        missing[relations[0, :2]] = False
    return missing


def _missing_relations(listable: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """bool [M]: relations left unlisted among the ``listable`` ones; at least one stays."""
    missing = (rng.random(len(listable)) < share) & listable
    if listable.any() and not (listable & ~missing).any():
        missing[np.flatnonzero(listable)[0]] = False
    return missing


def _moved_boxes(
    boxes: np.ndarray, share: float, image_size: int, rng: np.random.Generator
) -> np.ndarray:
    """int64 [N, 4] xyxy boxes with each corner moved by up to ``share`` of the box's side,
    clipped to the image and at least 2 pixels wide and high."""
    side = (boxes[:, 2] - boxes[:, 0]).astype(np.float64)
    delta = rng.uniform(-share, share, size=boxes.shape) * side[:, None]
    moved = np.clip(np.rint(boxes + delta).astype(np.int64), 0, image_size)
    for lo, hi in ((0, 2), (1, 3)):
        moved[:, hi] = np.maximum(moved[:, hi], np.minimum(moved[:, lo] + 2, image_size))
        moved[:, lo] = np.minimum(moved[:, lo], moved[:, hi] - 2)
    return moved


def damaged_annotation(
    scene: Mapping[str, np.ndarray],
    damage: SyntheticDamage,
    image_size: int,
    scene_key: tuple[int, ...],
) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """Leaves objects and relations out and moves boxes, as ``damage`` says.

    Args:
        scene: every object drawn and every relation that holds: ``boxes`` int64 [N, 4] xyxy
            pixels, ``labels`` int64 [N] 0-based classes as written (wrong ones included),
            ``relations`` int64 [M, 3] (subject, object, written 0-based predicate),
            ``true_labels`` [N], ``true_predicates`` [M], ``changed_labels`` bool [N],
            ``changed_predicates`` bool [M].
        damage: the knobs (``missing_objects``, ``missing_relations``, ``box_noise`` act here).
        image_size: the square image's side in pixels.
        scene_key: the scene's seed sequence (each knob draws from its own stream).

    Returns:
        (annotation, record): the annotation of the annotated objects (``boxes``, ``labels``,
        ``relations`` with subject and object indices into them); the record of what differs
        from the truth, by positions in the annotation: ``labels`` and ``predicates`` as
        ``(position, true, written)``, ``moved_boxes`` as ``(position, true box, written
        box)``, ``missing_objects`` as ``{"box", "class"}`` and ``missing_relations`` as
        ``{"subject", "object", "predicate"}`` whose ends are ``["annotation", position]`` or
        ``["missing", index into missing_objects]`` and whose predicate is the true one.
    """
    boxes, relations = scene["boxes"], scene["relations"]
    missing = _missing_objects(
        relations, len(boxes), damage.missing_objects, knob_rng(scene_key, "missing_objects")
    )
    listable = ~missing[relations[:, 0]] & ~missing[relations[:, 1]]
    unlisted = _missing_relations(
        listable, damage.missing_relations, knob_rng(scene_key, "missing_relations")
    )
    kept, listed = np.flatnonzero(~missing), np.flatnonzero(listable & ~unlisted)
    position = np.cumsum(~missing) - 1  # object index -> annotated position
    written = boxes[kept]
    if damage.box_noise > 0:  # its own stream: drawn only when boxes move
        written = _moved_boxes(
            written, damage.box_noise, image_size, knob_rng(scene_key, "box_noise")
        )
    annotation = {
        "boxes": written,
        "labels": scene["labels"][kept],
        "relations": np.column_stack(
            [position[relations[listed, 0]], position[relations[listed, 1]], relations[listed, 2]]
        ).reshape(-1, 3),
    }
    return annotation, _image_record(scene, annotation, kept, listed, missing, position)


def _image_record(
    scene: Mapping[str, np.ndarray],
    annotation: Mapping[str, np.ndarray],
    kept: np.ndarray,
    listed: np.ndarray,
    missing: np.ndarray,
    position: np.ndarray,
) -> dict[str, list]:
    """What differs from the truth in one image (see :func:`damaged_annotation`)."""
    absent = np.flatnonzero(missing)
    missing_index = {int(i): k for k, i in enumerate(absent)}

    def end(i: int) -> list:
        return ["missing", missing_index[i]] if missing[i] else ["annotation", int(position[i])]

    truth_l, truth_p = scene["true_labels"], scene["true_predicates"]
    relations = scene["relations"]
    unlisted = np.setdiff1d(np.arange(len(relations)), listed)
    return {
        "labels": [
            (j, int(truth_l[i]), int(scene["labels"][i]))
            for j, i in enumerate(kept)
            if scene["changed_labels"][i]
        ],
        "predicates": [
            (r, int(truth_p[m]), int(relations[m, 2]))
            for r, m in enumerate(listed)
            if scene["changed_predicates"][m]
        ],
        "moved_boxes": [
            (j, [int(v) for v in scene["boxes"][i]], [int(v) for v in annotation["boxes"][j]])
            for j, i in enumerate(kept)
            if (scene["boxes"][i] != annotation["boxes"][j]).any()
        ],
        "missing_objects": [
            {"box": [int(v) for v in scene["boxes"][i]], "class": int(truth_l[i])} for i in absent
        ],
        "missing_relations": [
            {
                "subject": end(int(relations[m, 0])),
                "object": end(int(relations[m, 1])),
                "predicate": int(truth_p[m]),
            }
            for m in unlisted
        ],
    }


def write_damage_record(
    path: Path, records: list[dict], per_image: list[dict], damage: SyntheticDamage
) -> None:
    """Writes ``corruption.json``: the ground truth of the damage, by the ids ``write_relcoco``
    assigns (images and annotations 1, 2, ..., relationships by position in the file).

    Args:
        path: the file to write (atomically).
        records: the annotations as written (``labels`` [N], ``relations`` [M, 3] each).
        per_image: each image's record from :func:`damaged_annotation`.
        damage: the knobs, recorded under ``settings``.
    """
    out: dict[str, Any] = {
        "about": "what the demo generator did to these synthetic labels (0-based class / "
        "predicate indices, xyxy pixel boxes); a filter must never read this file",
        "settings": damage.as_dict(),
        **{k: [] for k in ("boxes", "relationships", "moved_boxes")},
        **{k: [] for k in ("missing_objects", "missing_relationships")},
    }
    box_id, rel_position = 1, 0
    for image_id, (ann, record) in enumerate(zip(records, per_image), start=1):
        ids = (image_id, box_id, rel_position, len(out["missing_objects"]))
        for key, entries in _file_entries(record, *ids).items():
            out[key] += entries
        box_id += len(ann["labels"])
        rel_position += len(ann["relations"])
    atomic_write_text(path, json.dumps(out) + "\n")


def _file_entries(
    record: Mapping[str, list], image_id: int, box_id: int, rel_position: int, first_missing: int
) -> dict[str, list]:
    """One image's record in the file's ids: its first annotation is ``box_id``, its first
    relationship ``rel_position``, its first missing object ``first_missing``."""

    def end(ref: list) -> dict[str, int]:
        kind, k = ref
        if kind == "annotation":
            return {"annotation_id": box_id + k}
        return {"missing_object": first_missing + k}

    return {
        "boxes": [
            {"annotation_id": box_id + j, "true": t, "written": w} for j, t, w in record["labels"]
        ],
        "relationships": [
            {"relationship": rel_position + r, "true": t, "written": w}
            for r, t, w in record["predicates"]
        ],
        "moved_boxes": [
            {"annotation_id": box_id + j, "true": t, "written": w}
            for j, t, w in record["moved_boxes"]
        ],
        "missing_objects": [{"image_id": image_id, **m} for m in record["missing_objects"]],
        "missing_relationships": [
            {
                "image_id": image_id,
                "subject": end(m["subject"]),
                "object": end(m["object"]),
                "predicate": m["predicate"],
            }
            for m in record["missing_relations"]
        ],
    }
