"""Prompt adherence in the synthetic shape world, read from the pixels.

For a prompt "a {colour} {shape} on a {colour} background", each image is read back: the background is
the palette colour most of its border pixels are closest to; the foreground is the palette colour most
of the remaining interior pixels are closest to; the shape is the template (every known shape, drawn
at the foreground's box over a few offsets and scales) with the best overlap with the foreground mask.
An image's adherence is the fraction of the three attributes that match its prompt; a set's adherence
is the mean over images (chance is about 0.14: one of eight colours, one of seven shapes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ambient.synthetic import ALL_SHAPES, COLORS, draw_shape

from .results import AdherenceScore

PROMPT = re.compile(
    rf"^an? (?P<fg>{'|'.join(COLORS)}) (?P<shape>{'|'.join(ALL_SHAPES)}) on an? (?P<bg>{'|'.join(COLORS)}) "
    r"background$"
)
_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[name] for name in _NAMES], dtype=np.float32)
MIN_FOREGROUND = 0.01  # of the image; less than this counts as "no shape drawn"


@dataclass(frozen=True)
class Reading:
    """What an image shows, as read from its pixels (None: nothing readable)."""

    bg: str
    fg: str | None
    shape: str | None


@dataclass(frozen=True)
class PromptSpec:
    fg: str
    shape: str
    bg: str


def parse_prompt(prompt: str) -> PromptSpec | None:
    """The attributes of a synthetic-world prompt, or None for any other prompt."""
    match = PROMPT.match(prompt.strip().lower())
    return PromptSpec(match["fg"], match["shape"], match["bg"]) if match else None


def _palette_classes(image: np.ndarray) -> np.ndarray:
    """(H, W) index of the nearest palette colour of each pixel."""
    pixels = image.reshape(-1, 3).astype(np.float32)
    distances = ((pixels[:, None, :] - _PALETTE[None, :, :]) ** 2).sum(-1)
    return distances.argmin(1).reshape(image.shape[:2])


def _template(shape: str, size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw_shape(ImageDraw.Draw(canvas), shape, cx, cy, radius, 255)
    return np.asarray(canvas) > 127


def read_shape(mask: np.ndarray) -> str | None:
    """The known shape whose template overlaps ``mask`` best (intersection over union)."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return None
    size = mask.shape[0]
    y0, y1 = np.percentile(rows, [1, 99])
    x0, x1 = np.percentile(cols, [1, 99])
    cx, cy = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2
    half = max(x1 - x0 + 1, y1 - y0 + 1) / 2
    best, best_iou = None, -1.0
    for shape in ALL_SHAPES:
        for scale in (0.9, 1.0, 1.1):
            for dy in (-0.1, 0.0, 0.1):  # the star's box is not centred on its centre
                template = _template(shape, size, cx, cy + dy * half, half * scale)
                union = np.logical_or(template, mask).sum()
                iou = np.logical_and(template, mask).sum() / union if union else 0.0
                if iou > best_iou:
                    best, best_iou = shape, iou
    return best


def read_image(image: np.ndarray) -> Reading:
    """Read background colour, foreground colour and shape from an (H, W, 3) uint8 image."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    classes = _palette_classes(image)
    border = np.concatenate([classes[0], classes[-1], classes[:, 0], classes[:, -1]])
    bg = int(np.bincount(border, minlength=len(_NAMES)).argmax())
    foreground = classes != bg
    if foreground.mean() < MIN_FOREGROUND:
        return Reading(bg=_NAMES[bg], fg=None, shape=None)
    fg = int(np.bincount(classes[foreground], minlength=len(_NAMES)).argmax())
    return Reading(bg=_NAMES[bg], fg=_NAMES[fg], shape=read_shape(classes == fg))


def _as_hwc_uint8(images) -> list[np.ndarray]:
    """Accept PIL images, (N, 3, H, W) uint8 tensors/arrays or (N, H, W, 3) arrays."""
    if isinstance(images, Sequence) and images and isinstance(images[0], Image.Image):
        return [np.asarray(im.convert("RGB")) for im in images]
    array = np.asarray(images.cpu() if hasattr(images, "cpu") else images)
    if array.ndim != 4:
        raise ValueError(f"expected a batch of images, got shape {array.shape}")
    if array.shape[1] == 3 and array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {array.dtype}")
    return list(array)


def prompt_adherence(images, prompts: Sequence[str]) -> AdherenceScore:
    """How well ``images`` show their ``prompts`` (synthetic-world prompts only)."""
    arrays = _as_hwc_uint8(images)
    if len(arrays) != len(prompts) or not arrays:
        raise ValueError(f"prompt_adherence: {len(arrays)} images for {len(prompts)} prompts")
    bg, fg, shape = [], [], []
    for array, prompt in zip(arrays, prompts, strict=True):
        spec = parse_prompt(prompt)
        if spec is None:
            raise ValueError(f"prompt_adherence: {prompt!r} is not a synthetic-world prompt")
        reading = read_image(array)
        bg.append(reading.bg == spec.bg)
        fg.append(reading.fg == spec.fg)
        shape.append(reading.shape == spec.shape)
    b, f, s = (np.array(v, dtype=bool) for v in (bg, fg, shape))
    return AdherenceScore(
        n=len(arrays),
        background=float(b.mean()),
        foreground=float(f.mean()),
        shape=float(s.mean()),
        colors=float((b & f).mean()),
        all=float((b & f & s).mean()),
        adherence=float(np.mean([b.mean(), f.mean(), s.mean()])),
    )


def adherence_prompts(world: str, count: int, seed: int = 0) -> list[str]:
    """``count`` prompts of a synthetic world (the captions of its items ``seed``..)."""
    from ambient.synthetic import synthetic_items

    return [item.caption for item in synthetic_items(count, seed=seed, size=8, world=world)]
