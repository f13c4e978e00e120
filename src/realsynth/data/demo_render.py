"""Rendering of demo scenes in the two domains.

``synthetic``: flat background, exact palette colors, no noise: what a clean generator draws.
``real``: textured background, jittered object colors, small unannotated distractor blobs that
may occlude object edges, a lighting gradient, blur and sensor noise.

Objects are drawn with PIL (no anti-aliasing) and every random draw comes from the generator that
is passed in, so the same generator state gives the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("square", "circle", "triangle")
PALETTE = ((220, 40, 40), (40, 170, 60), (50, 80, 220), (230, 200, 40))
SYNTHETIC_BACKGROUND = (200, 200, 200)


@dataclass(frozen=True)
class DemoObject:
    """One shape: integer pixel box ``x0, y0`` (top-left) and side ``size``; the annotated box is
    xyxy ``[x0, y0, x0 + size, y0 + size]`` in pixels."""

    shape: int
    color: int
    x0: int
    y0: int
    size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x0 + self.size, self.y0 + self.size)


def _draw_shape(draw: ImageDraw.ImageDraw, obj: DemoObject, fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = obj.x0, obj.y0, obj.x0 + obj.size - 1, obj.y0 + obj.size - 1
    name = SHAPES[obj.shape]
    if name == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif name == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)


def render_synthetic(objects: Sequence[DemoObject], image_size: int) -> Image.Image:
    """Clean rendering: flat background and exact palette colors."""
    image = Image.new("RGB", (image_size, image_size), SYNTHETIC_BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw_shape(draw, obj, PALETTE[obj.color])
    return image


def _textured_background(image_size: int, rng: np.random.Generator) -> Image.Image:
    """Gray base with low-frequency colored texture."""
    base = rng.uniform(70.0, 170.0)
    coarse = base + rng.normal(0.0, 18.0, size=(8, 8, 3))
    small = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), "RGB")
    return small.resize((image_size, image_size), Image.BILINEAR)


def _distractors(draw: ImageDraw.ImageDraw, image_size: int, rng: np.random.Generator) -> None:
    """2-5 small muted blobs that are not annotated (clutter; they may clip object edges)."""
    for _ in range(int(rng.integers(2, 6))):
        radius = int(rng.integers(1, 4))
        cx, cy = (int(v) for v in rng.integers(0, image_size, size=2))
        gray = rng.uniform(60.0, 190.0)
        tint = rng.uniform(-20.0, 20.0, size=3)
        fill = tuple(int(np.clip(gray + t, 0, 255)) for t in tint)
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)


def _lighting(image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative linear gradient [H, W, 1] in a random direction."""
    angle = rng.uniform(0.0, 2 * np.pi)
    strength = rng.uniform(0.2, 0.5)
    coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size - 0.5
    ramp = np.cos(angle) * coords[None, :] + np.sin(angle) * coords[:, None]
    return (1.0 + strength * ramp)[:, :, None]


def render_real(
    objects: Sequence[DemoObject], image_size: int, rng: np.random.Generator
) -> Image.Image:
    """Camera-like rendering: texture, color jitter, clutter, lighting, blur and noise."""
    image = _textured_background(image_size, rng)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        jitter = rng.uniform(-25.0, 25.0, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(PALETTE[obj.color], jitter))
        _draw_shape(draw, obj, fill)
    _distractors(draw, image_size, rng)
    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.4, 0.9))))
    pixels = np.asarray(image, dtype=np.float32) * _lighting(image_size, rng)
    pixels += rng.normal(0.0, 6.0, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def blend_toward(flat: Image.Image, real: Image.Image, gap: float) -> Image.Image:
    """``gap * flat + (1 - gap) * real``, rounded: 1 is the flat rendering, 0 the real one."""
    mixed = gap * np.asarray(flat, np.float32) + (1.0 - gap) * np.asarray(real, np.float32)
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8), "RGB")


def rotate_hue(image: Image.Image, degrees: float) -> Image.Image:
    """The image with every hue turned by ``degrees`` (grays stay gray; PIL's 8-bit HSV)."""
    hsv = np.array(image.convert("HSV"), dtype=np.int64)
    hsv[:, :, 0] = (hsv[:, :, 0] + round(degrees / 360.0 * 256)) % 256
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
