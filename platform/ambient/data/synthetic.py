"""The built-in synthetic captioned dataset: procedurally drawn shapes with matching captions.

Deterministic by (seed, index), so the demo and the tests need no download. Each image is one
coloured shape (circle, square, triangle, diamond or ring) of a random size and position on a plain
background of another colour; the caption says exactly that, e.g. "a red circle on a blue background".
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond", "ring")


@dataclass(frozen=True)
class SyntheticItem:
    id: str
    image: Image.Image
    caption: str


def render_synthetic(index: int, seed: int = 0, size: int = 64) -> SyntheticItem:
    """Draw item ``index`` of the dataset with ``seed`` at ``size`` x ``size`` pixels (RGB)."""
    if size < 8:
        raise ValueError(f"synthetic image size must be >= 8 pixels, got {size}")
    rng = random.Random(f"synthetic:{seed}:{index}")
    shape = rng.choice(SHAPES)
    fg_name, bg_name = rng.sample(sorted(COLORS), 2)
    img = Image.new("RGB", (size, size), COLORS[bg_name])
    draw = ImageDraw.Draw(img)
    radius = rng.uniform(0.18, 0.34) * size
    cx = rng.uniform(radius, size - radius)
    cy = rng.uniform(radius, size - radius)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    fg = COLORS[fg_name]
    if shape == "circle":
        draw.ellipse(box, fill=fg)
    elif shape == "square":
        draw.rectangle(box, fill=fg)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fg)
    elif shape == "diamond":
        draw.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)], fill=fg)
    else:  # ring
        draw.ellipse(box, outline=fg, width=max(2, int(radius * 0.35)))
    caption = f"a {fg_name} {shape} on a {bg_name} background"
    return SyntheticItem(id=f"synthetic-{seed}-{index:06d}", image=img, caption=caption)


def synthetic_items(count: int, seed: int = 0, size: int = 64, start: int = 0) -> Iterator[SyntheticItem]:
    """Items ``start`` .. ``start + count - 1`` of the synthetic dataset."""
    for index in range(start, start + count):
        yield render_synthetic(index, seed, size)
