"""One demo scene: 2-4 shapes with spatial and appearance relations, rendered in the real or
the synthetic domain, the synthetic one damaged as :mod:`realsynth.data.demo_damage` says.

Scenes are built for learnability: 2-4 shapes (3 classes, 4 colors) that never overlap, each at
least ~19% of the image side. Every ordered pair (subject, object) gets at most one predicate:
"same color as" when the two share a palette color, otherwise a spatial predicate when one axis
clearly dominates the displacement (|d_major| >= 1.5 |d_minor|), otherwise none; at most
``MAX_RELATIONS`` per image, and every image has at least one. "left of" means the subject's
center is left of the object's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from realsynth.data.demo_damage import (
    SyntheticDamage,
    damaged_annotation,
    knob_rng,
    shifted_kinds,
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

DEMO_CLASSES = SHAPES
DEMO_PREDICATES = ("left of", "right of", "above", "below", "same color as")
MAX_RELATIONS = 8
DOMINANCE = 1.5


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
