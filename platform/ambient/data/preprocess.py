"""Decode, resize and crop by SDXL's conventions; record the micro-conditioning.

As in diffusers' SDXL training script: resize the shorter side to the resolution (bilinear), then
crop a resolution x resolution square (center, or at a random offset); ``original_size_hw`` is the
image's size before resizing and ``crop_top_left`` the crop's (top, left) in the resized image.
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, UnidentifiedImageError

from ambient.core import sample_seed


def resize_and_crop(
    image: Image.Image, resolution: int, crop: str = "center", crop_seed: int = 0
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """(pixels (3, R, R) float32 in [-1, 1], original (h, w), crop (top, left))."""
    image = image.convert("RGB")
    w, h = image.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    if crop == "random":
        rng = random.Random(crop_seed)
        top, left = rng.randint(0, new_h - resolution), rng.randint(0, new_w - resolution)
    else:
        top, left = int(round((new_h - resolution) / 2.0)), int(round((new_w - resolution) / 2.0))
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return pixels, (h, w), (top, left)


def decode_image(data: bytes) -> Image.Image:
    """Decode fully (PIL is lazy, so a truncated file would otherwise fail later)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


class Preprocess:
    """Ray Data batch function: raw rows -> ``pixels``, ``original_size_hw``, ``crop_top_left``."""

    def __init__(self, resolution: int, crop: str, seed: int):
        self.resolution, self.crop, self.seed = resolution, crop, seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        r = self.resolution
        pixels = np.zeros((n, 3, r, r), np.float32)
        sizes = np.zeros((n, 2), np.int32)
        crops = np.zeros((n, 2), np.int32)
        rejects = list(batch["reject"])
        for i in range(n):
            if rejects[i]:
                continue
            try:
                image = decode_image(bytes(batch["image"][i]))
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
                rejects[i] = f"unreadable image: {type(exc).__name__}: {exc}"[:200]
                continue
            seed = sample_seed(str(batch["id"][i]), self.seed, stream="crop")
            pixels[i], sizes[i], crops[i] = resize_and_crop(image, r, self.crop, seed)
        return {
            "id": batch["id"],
            "caption": batch["caption"],
            "pixels": pixels,
            "original_size_hw": sizes,
            "crop_top_left": crops,
            "reject": np.array(rejects, dtype=object),
        }
