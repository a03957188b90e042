"""Generation similarity: sample from the training captions, find each sample's closest training image.

For each generated image: the maximum feature cosine to any training item (and which one). A model
that copies its training set produces samples whose nearest training image is a near-duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ambient.core.sampling_spec import SamplingSpec
from ambient.models.loading import SDXLComponents
from ambient.models.sampling import call_spec, sample_latents
from ambient.models.vae import decode_latents

from .features import FeatureSpace
from .results import DEFAULT_THRESHOLDS, GenerationSummary


@dataclass
class GenerationResult:
    captions: list[str]
    seeds: list[int]
    images: Tensor  # uint8 (N, 3, H, W)
    max_similarity: Tensor  # (N,)
    nearest: Tensor  # (N,) index of the closest training item
    thresholds: list[float]

    def fraction_above(self, threshold: float) -> float:
        return float((self.max_similarity > threshold).float().mean())

    def summary(self) -> GenerationSummary:
        return GenerationSummary(
            n=len(self.captions),
            mean_max_similarity=float(self.max_similarity.mean()),
            max_similarity=float(self.max_similarity.max()),
            fraction_above={t: self.fraction_above(t) for t in self.thresholds},
        )


@torch.no_grad()
def generate_from_captions(
    comps: SDXLComponents,
    captions: list[str],
    n: int,
    *,
    spec: SamplingSpec | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    mode: str | None = None,
    sigma_n: float | None = None,
    seed: int,
    height: int,
    width: int,
    batch_size: int = 8,
) -> tuple[list[str], list[int], Tensor]:
    """n images, caption i % len(captions), sample i seeded with seed + i (independent of batching),
    sampled as ``spec`` says (or as ``steps``, ``guidance``, ``mode`` and ``sigma_n`` say).
    ``batch_size`` prompts are sampled and decoded at a time."""
    spec = call_spec(spec, mode, sigma_n, steps, guidance)  # type: ignore[arg-type]
    prompts = [captions[i % len(captions)] for i in range(n)]
    seeds = [seed + i for i in range(n)]
    images = []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        latents = sample_latents(
            comps,
            prompts[sl],
            spec=spec,
            seed=seeds[sl],
            height=height,
            width=width,
        )
        images.append(decode_latents(comps.vae, latents, batch_size))
    return prompts, seeds, torch.cat(images)


def generation_similarity(
    comps: SDXLComponents,
    captions: list[str],
    space: FeatureSpace,
    *,
    n: int,
    spec: SamplingSpec,
    seed: int = 0,
    height: int,
    width: int,
    thresholds: list[float] = DEFAULT_THRESHOLDS,
    batch_size: int = 8,
) -> GenerationResult:
    prompts, seeds, images = generate_from_captions(
        comps,
        captions,
        n,
        spec=spec,
        seed=seed,
        height=height,
        width=width,
        batch_size=batch_size,
    )
    best, nearest = space.to_reference(images).max(dim=1)
    return GenerationResult(prompts, seeds, images, best, nearest, list(thresholds))
