"""A sample-quality score that needs no clean data: the noisy-space sliced Wasserstein distance.

Only noisy held-out latents exist (y = x0 + sigma_n z). If a model samples the clean distribution,
then its samples plus fresh noise at sigma_n have the law of y; so the distance between
{sample + sigma_n z} and the held-out {y} measures sample quality on the data's own terms. It is
computed the same way for every trial (same prompts, seeds and noise), whatever level a trial trained at.
"""

from __future__ import annotations

import torch

from ambient.core import sliced_wasserstein
from ambient.models.loading import load_components
from ambient.models.sampling import sample_latents


@torch.no_grad()
def noisy_space_distance(
    model_dir: str, holdout: dict, *, mode: str, sampling_sigma_n: float, num_steps: int, seed: int = 0
) -> float:
    comps = load_components(model_dir)
    captions = list(holdout["captions"])
    latents = sample_latents(
        comps,
        captions,
        mode=mode,
        sigma_n=sampling_sigma_n,
        num_steps=num_steps,
        guidance_scale=1.0,
        seed=list(range(seed, seed + len(captions))),
    )
    y = holdout["latent"]
    data_sigma = holdout["sigma_n"].reshape(-1, *([1] * (y.ndim - 1)))
    gen = torch.Generator().manual_seed(seed + 1)
    noised = latents.float() + data_sigma * torch.randn(latents.shape, generator=gen)
    return sliced_wasserstein(noised, y, seed=seed)
