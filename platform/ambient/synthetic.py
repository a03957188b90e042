"""The built-in synthetic captioned dataset: procedurally drawn shapes with matching captions.

Deterministic by (world, seed, index), so the demo and the tests need no download. Each image is one
coloured shape of a random size and position on a plain background of another colour; the caption says
exactly that, e.g. "a red circle on a blue background".

Worlds are fixed subsets of that space, so that a model can be shown one part and tested on another:

- ``shapes``: the five base shapes, every colour pair (the original dataset; ids ``synthetic-S-NNNNNN``)
- ``base``: the five base shapes without the ``HELD_OUT_PAIRS`` colour combinations (what the default
  base model was pre-trained on)
- ``heldout``: the five base shapes in the held-out colour pairs only (colours the base knows, in
  combinations its captions never had: the test of prompt adherence)
- ``cross``, ``star``: one new shape, every colour pair (concepts the base has never seen; the demo
  fine-tunes on noisy crosses)
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

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
SHAPES = ("circle", "square", "triangle", "diamond", "ring")  # the base shapes
NEW_SHAPES = ("cross", "star")  # never in the base's training set
ALL_SHAPES = SHAPES + NEW_SHAPES
# (foreground, background) pairs left out of the base world: each colour once as foreground and once
# as background, so the base learns every colour and is tested on combinations it never saw.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "blue"),
        ("green", "yellow"),
        ("blue", "orange"),
        ("yellow", "purple"),
        ("purple", "white"),
        ("orange", "black"),
        ("white", "red"),
        ("black", "green"),
    }
)
World = Literal["shapes", "base", "heldout", "cross", "star"]
WORLDS: tuple[str, ...] = ("shapes", "base", "heldout", "cross", "star")
SYNTHETIC_ID = re.compile(r"^synthetic-(?:(?P<world>[a-z]+)-)?(?P<seed>-?\d+)-(?P<index>\d+)$")


@dataclass(frozen=True)
class SyntheticItem:
    id: str
    image: Image.Image
    caption: str
    shape: str
    fg: str
    bg: str


def _world_choices(world: str) -> tuple[tuple[str, ...], list[tuple[str, str]] | None]:
    """The shapes of ``world`` and its allowed colour pairs (None = any two distinct colours)."""
    pairs = [(f, b) for f in sorted(COLORS) for b in sorted(COLORS) if f != b]
    if world == "shapes":
        return SHAPES, None
    if world == "base":
        return SHAPES, [p for p in pairs if p not in HELD_OUT_PAIRS]
    if world == "heldout":
        return SHAPES, sorted(HELD_OUT_PAIRS)
    if world in NEW_SHAPES:
        return (world,), None
    raise ValueError(f"unknown synthetic world {world!r}; choose one of {', '.join(WORLDS)}")


def shape_polygon(shape: str, cx: float, cy: float, radius: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape centred at (cx, cy) inside a box of half-size ``radius``."""
    if shape == "triangle":
        return [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)]
    if shape == "diamond":
        return [(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)]
    if shape == "cross":  # a plus sign with arms a third of the box wide
        a = radius / 3
        return [
            (cx - a, cy - radius), (cx + a, cy - radius), (cx + a, cy - a), (cx + radius, cy - a),
            (cx + radius, cy + a), (cx + a, cy + a), (cx + a, cy + radius), (cx - a, cy + radius),
            (cx - a, cy + a), (cx - radius, cy + a), (cx - radius, cy - a), (cx - a, cy - a),
        ]  # fmt: skip
    if shape == "star":  # five points, inner radius 0.45
        points = []
        for k in range(10):
            r = radius if k % 2 == 0 else 0.45 * radius
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
        return points
    return None


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, fill) -> None:
    """Draw ``shape`` centred at (cx, cy) with half-size ``radius`` (also used to build templates)."""
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(radius * 0.35)))
    else:
        polygon = shape_polygon(shape, cx, cy, radius)
        if polygon is None:
            raise ValueError(f"unknown shape {shape!r}")
        draw.polygon(polygon, fill=fill)


def synthetic_id(world: str, seed: int, index: int) -> str:
    # The original world keeps its original ids, so existing datasets and audits still re-render.
    if world == "shapes":
        return f"synthetic-{seed}-{index:06d}"
    return f"synthetic-{world}-{seed}-{index:06d}"


def render_synthetic(index: int, seed: int = 0, size: int = 64, world: str = "shapes") -> SyntheticItem:
    """Draw item ``index`` of ``world`` with ``seed`` at ``size`` x ``size`` pixels (RGB)."""
    if size < 8:
        raise ValueError(f"synthetic image size must be >= 8 pixels, got {size}")
    shapes, pairs = _world_choices(world)
    prefix = "" if world == "shapes" else f"{world}:"
    rng = random.Random(f"synthetic:{prefix}{seed}:{index}")
    shape = rng.choice(shapes)
    fg_name, bg_name = rng.sample(sorted(COLORS), 2) if pairs is None else rng.choice(pairs)
    img = Image.new("RGB", (size, size), COLORS[bg_name])
    radius = rng.uniform(0.18, 0.34) * size
    cx = rng.uniform(radius, size - radius)
    cy = rng.uniform(radius, size - radius)
    draw_shape(ImageDraw.Draw(img), shape, cx, cy, radius, COLORS[fg_name])
    return SyntheticItem(
        id=synthetic_id(world, seed, index),
        image=img,
        caption=caption_for(fg_name, shape, bg_name),
        shape=shape,
        fg=fg_name,
        bg=bg_name,
    )


def caption_for(fg: str, shape: str, bg: str) -> str:
    return f"a {fg} {shape} on {_background(bg)}"


def _background(bg: str) -> str:
    article = "an" if bg[0] in "aeiou" else "a"
    return f"{article} {bg} background"


# What a partial caption names (see ``partial_caption``): the foreground and shape, the shape and the
# background, or the background alone.
PARTIAL_FORMS = ("foreground", "background", "background_only")


def partial_caption(item: SyntheticItem, seed: int, index: int) -> str:
    """A caption of ``item`` that names only some of its attributes, the form chosen by (seed, index).

    Real captions say more or less about an image; here each colour word also comes without the other.
    As a further pre-training stage of the base it lowers held-out colour-pair adherence (0.65 against
    0.81 with full captions: docs/benchmarks.md, "The base model")."""
    form = random.Random(f"partial-caption:{seed}:{index}").choice(PARTIAL_FORMS)
    if form == "foreground":
        return f"a {item.fg} {item.shape}"
    if form == "background":
        return f"a {item.shape} on {_background(item.bg)}"
    return _background(item.bg)


def has_partial_caption(seed: int, index: int, share: float) -> bool:
    """Whether item ``index`` gets a partial caption when a ``share`` of the items do (drawn per item, so
    independent of ``is_replay``'s evenly spaced replay items)."""
    return share > 0 and random.Random(f"partial-share:{seed}:{index}").random() < share


def world_of_id(row_id: str) -> str | None:
    """The synthetic world an item id belongs to (None for any other id)."""
    match = SYNTHETIC_ID.match(row_id)
    world = (match.group("world") or "shapes") if match else None
    return world if world in WORLDS else None


def render_from_id(row_id: str, size: int) -> SyntheticItem:
    """Re-render the synthetic item whose id is ``row_id`` (any world)."""
    world = world_of_id(row_id)
    if world is None:
        raise ValueError(f"{row_id!r} is not a synthetic item id")
    match = SYNTHETIC_ID.match(row_id)
    return render_synthetic(int(match.group("index")), int(match.group("seed")), size, world)


def is_replay(index: int, share: float) -> bool:
    """Whether item ``index`` of a mixed dataset is drawn from the replay world: evenly spaced, a
    ``share`` of every run of consecutive indices (share 0.25: items 3, 7, 11, ...)."""
    return math.floor((index + 1) * share) > math.floor(index * share)


def synthetic_items(
    count: int, seed: int = 0, size: int = 64, start: int = 0, world: str = "shapes"
) -> Iterator[SyntheticItem]:
    """Items ``start`` .. ``start + count - 1`` of the synthetic dataset ``world``."""
    for index in range(start, start + count):
        yield render_synthetic(index, seed, size, world)
