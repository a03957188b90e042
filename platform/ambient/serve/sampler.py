"""One model call for a batch of images that share their sampling settings.

The sampling itself is ambient.models.sampling's (per-image seeds and negative prompts); what is the
service's own is the key that decides which images may share a call, and the fixed-shape padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from ambient.core.sampling_spec import SamplingSpec
from ambient.models.loading import SDXLComponents
from ambient.models.sampling import sample_images


@dataclass(frozen=True)
class SamplingKey:
    """Settings that must be equal for images to share one model call: how they are sampled, and
    their size (the latents of one call share a shape)."""

    spec: SamplingSpec
    height: int
    width: int


@torch.no_grad()
def generate(
    components: SDXLComponents,
    key: SamplingKey,
    prompts: list[str],
    negative_prompts: list[str],
    seeds: list[int],
    call_rows: int | None = None,
) -> list[Image.Image]:
    """One image per (prompt, negative prompt, seed); image i depends on its own seed only.

    CPU (and GPU) kernels pick their blocking by batch size, so the same row computed in batches of
    different sizes can differ in the last float bits, and after 8-bit rounding a pixel can move by
    one level. With ``call_rows`` the images run in model calls of exactly that many rows (the last
    call padded with filler rows, which are dropped): a row's result depends on the call's shape, not
    on its position or its neighbours, so an image is bitwise the same whatever batch it lands in.
    Without it, all images run in one call of their own size. Either way the text encoders, UNet and
    VAE see at most that call's rows: the caller bounds them by config (``batching.call_rows``, or the
    Serve batch's ``batching.max_batch_images``).
    """
    if not len(prompts) == len(negative_prompts) == len(seeds):
        raise ValueError("prompts, negative_prompts and seeds must have the same length")
    if call_rows is None:
        return _call(components, key, prompts, negative_prompts, seeds)
    if call_rows < 1:
        raise ValueError(f"call_rows must be >= 1, got {call_rows}")
    images: list[Image.Image] = []
    for lo in range(0, len(prompts), call_rows):
        chunk = slice(lo, lo + call_rows)
        count = len(prompts[chunk])
        filler = call_rows - count
        out = _call(
            components,
            key,
            [*prompts[chunk], *[""] * filler],
            [*negative_prompts[chunk], *[""] * filler],
            [*seeds[chunk], *[0] * filler],
        )
        images += out[:count]
    return images


def _call(
    components: SDXLComponents,
    key: SamplingKey,
    prompts: list[str],
    negative_prompts: list[str],
    seeds: list[int],
) -> list[Image.Image]:
    return sample_images(
        components,
        prompts,
        negative_prompts=negative_prompts,
        seed=seeds,
        spec=key.spec,
        height=key.height,
        width=key.width,
    )
