"""The denoiser's error on clean held-out latents, below and above a data noise level sigma_n.

A model trained on data noised at sigma_n sees no data below sigma_n: its denoiser there is what the
method extrapolates (consistency) or what the data's noise taught it (naive training learns to return
noisy latents). Measured on *clean* held-out latents x0: x = x0 + sigma z (z frozen per item id and
level, the same for every model), error = mean over elements of (h(x, sigma) - x0)^2, conditioned on
each item's caption. The Bayes error E||E[x0 | x] - x0||^2 is not zero, so the number only compares
models on the same items and levels (it is the denoising score-matching loss on clean data).

Levels, as in benchmarks/exactness.py: ``points`` log-spaced in [sigma_n / 20, 0.8 sigma_n] ("below")
and in [1.25 sigma_n, 4 sigma_n] ("above").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ambient.core import frozen_noise
from ambient.models.loading import SDXLComponents

from .conditioning import caption_denoiser

BELOW = (1 / 20, 0.8)
ABOVE = (1.25, 4.0)


def band_levels(sigma_n: float, band: tuple[float, float], points: int) -> list[float]:
    """``points`` log-spaced levels between band[0] * sigma_n and band[1] * sigma_n."""
    if sigma_n <= 0:
        raise ValueError(f"denoiser error bands need sigma_n > 0, got {sigma_n}")
    if points < 1:
        raise ValueError(f"points must be >= 1, got {points}")
    lo, hi = math.log(band[0] * sigma_n), math.log(band[1] * sigma_n)
    if points == 1:
        return [math.exp((lo + hi) / 2)]
    return [math.exp(lo + (hi - lo) * i / (points - 1)) for i in range(points)]


@torch.no_grad()
def denoiser_error(
    comps: SDXLComponents,
    latents: Tensor,
    ids: list[str],
    captions: list[str],
    sigma: float,
    *,
    seed: int = 0,
    batch_size: int = 16,
) -> float:
    """Mean squared error (per element) of h(x0 + sigma z, sigma) against clean latents x0."""
    if not (len(latents) == len(ids) == len(captions)) or len(ids) == 0:
        raise ValueError(f"{len(latents)} latents, {len(ids)} ids, {len(captions)} captions")
    scale = comps.vae_scale_factor
    height, width = latents.shape[-2] * scale, latents.shape[-1] * scale
    total, count = 0.0, 0
    for start in range(0, len(ids), batch_size):
        sl = slice(start, start + batch_size)
        x0 = latents[sl].float().to(comps.unet.device)
        z = frozen_noise(ids[sl], seed, tuple(x0.shape[1:]), stream=f"denoiser-error-{sigma:.6g}").to(x0)
        denoiser, _ = caption_denoiser(comps, captions[sl], height, width)
        x0_hat = denoiser(x0 + sigma * z, torch.full((len(x0),), sigma))
        total += float(((x0_hat.float() - x0) ** 2).sum())
        count += x0.numel()
    return total / count


def denoiser_error_bands(
    comps: SDXLComponents,
    latents: Tensor,
    ids: list[str],
    captions: list[str],
    sigma_n: float,
    *,
    points: int = 4,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, float | list[float]]:
    """{"below": mean error over the levels below sigma_n, "above": over those above, and the levels}."""
    out: dict[str, float | list[float]] = {"sigma_n": sigma_n}
    for name, band in (("below", BELOW), ("above", ABOVE)):
        levels = band_levels(sigma_n, band, points)
        errors = [
            denoiser_error(comps, latents, ids, captions, s, seed=seed, batch_size=batch_size) for s in levels
        ]
        out[name] = sum(errors) / len(errors)
        out[f"{name}_levels"] = levels
        out[f"{name}_errors"] = errors
    return out
