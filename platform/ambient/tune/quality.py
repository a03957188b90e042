"""A sample-quality score that needs no clean data: the noisy-space sliced Wasserstein distance.

Only noisy held-out latents exist (y = x0 + sigma_n z). If a model samples the clean distribution,
then its samples plus fresh noise at sigma_n have the law of y; so the distance between
{sample + sigma_n z} and the held-out {y} measures sample quality on the data's own terms. It is
computed the same way for every trial (same prompts, seeds and noise), whatever level a trial trained at.
The samples are drawn and decoded ``micro_batch`` prompts at a time; per-prompt seeds keep them
independent of it.
"""

from __future__ import annotations

import torch

from ambient.core import sliced_wasserstein
from ambient.core.sampling_spec import SamplingSpec, explicit_spec
from ambient.eval.adherence import parse_prompt, prompt_adherence
from ambient.models.loading import load_components
from ambient.models.sampling import sample_latents
from ambient.models.vae import decode_latents


@torch.no_grad()
def trial_quality(
    model_dir: str,
    holdout: dict,
    *,
    mode: str,
    sampling_sigma_n: float,
    num_steps: int,
    seed: int = 0,
    micro_batch: int = 4,
) -> dict[str, float | None]:
    """{"quality_sw": the noisy-space distance, "adherence": prompt adherence of the same samples where
    the held-out captions belong to the synthetic shape world, else None}."""
    comps = load_components(model_dir)
    # Guidance 1: the score measures the model's own distribution, not a guided one.
    spec = explicit_spec(mode, sampling_sigma_n, steps=num_steps, guidance=1.0)
    latents = _samples(comps, holdout, spec, seed, micro_batch)
    captions = [str(c) for c in holdout["captions"]]
    adherence = None
    if all(parse_prompt(c) for c in captions):
        adherence = prompt_adherence(decode_latents(comps.vae, latents, micro_batch), captions).adherence
    return {"quality_sw": _distance(latents, holdout, seed), "adherence": adherence}


def _samples(comps, holdout: dict, spec: SamplingSpec, seed: int, micro_batch: int):
    captions = list(holdout["captions"])
    latents = sample_latents(
        comps,
        captions,
        spec=spec,
        seed=list(range(seed, seed + len(captions))),
        micro_batch=micro_batch,
    )
    return latents


def _distance(latents, holdout: dict, seed: int) -> float:
    y = holdout["latent"]
    data_sigma = holdout["sigma_n"].reshape(-1, *([1] * (y.ndim - 1)))
    gen = torch.Generator().manual_seed(seed + 1)
    noised = latents.float() + data_sigma * torch.randn(latents.shape, generator=gen)
    return sliced_wasserstein(noised, y, seed=seed)
