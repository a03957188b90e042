"""One model call for a batch of images that share their sampling settings.

The sampling itself is ambient.models.sampling's (per-image seeds and negative prompts); what is the
service's own is the key that decides which images may share a call, and the fixed-shape padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image

from ambient.models.loading import SDXLComponents
from ambient.models.sampling import sample_images


@dataclass(frozen=True)
class SamplingKey:
    """Settings that must be equal for images to share one model call."""

    steps: int
    guidance_scale: float
    height: int
    width: int
    mode: Literal["full", "early_stop"]
    sigma_n: float
    method: Literal["euler", "heun", "posterior"]

    @property
    def sigma_stop(self) -> float:
        return self.sigma_n if self.mode == "early_stop" and self.sigma_n > 0 else 0.0


@torch.no_grad()
def generate(
    components: SDXLComponents,
    key: SamplingKey,
    prompts: list[str],
    negative_prompts: list[str],
    seeds: list[int],
    pad_to: int | None = None,
) -> list[Image.Image]:
    """One image per (prompt, negative prompt, seed); image i depends on its own seed only.

    CPU (and GPU) kernels pick their blocking by batch size, so the same row computed in batches of
    different sizes can differ in the last float bits, and after 8-bit rounding a pixel can move by
    one level. With ``pad_to`` every call runs at exactly that many rows (filler rows are dropped), so
    an image is bitwise the same whatever batch it lands in, at the price of computing the filler.
    """
    if not len(prompts) == len(negative_prompts) == len(seeds):
        raise ValueError("prompts, negative_prompts and seeds must have the same length")
    count = len(prompts)
    filler = max(0, (pad_to or 0) - count)
    images = sample_images(
        components,
        [*prompts, *[""] * filler],
        negative_prompts=[*negative_prompts, *[""] * filler],
        seed=[*seeds, *[0] * filler],
        mode=key.mode,
        sigma_n=key.sigma_n,
        num_steps=key.steps,
        guidance_scale=key.guidance_scale,
        height=key.height,
        width=key.width,
        method=key.method,
    )
    return images[:count]
