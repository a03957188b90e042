"""The validation ambient loss on held-out noisy rows: one definition for every run and every trial.

It is the ambient loss at each held-out row's *own* data level sigma_n (never the run's training
level), with the clean-space ("x0") weighting capped at 100, sigma_t drawn from EDM's log-normal
truncated above sigma_n, and the draws and noise fixed by a seed. Its expectation is minimised by the
true E[x0 | x_t] at every level, so runs trained at different noise levels, weights or learning rates
are compared on the same proper score.
"""

from __future__ import annotations

import torch

from ambient.core import Denoiser, ambient_loss, sample_training_sigmas
from ambient.models.loading import SDXLComponents

from .batch import conditioning

MAX_WEIGHT = 100.0
REPEATS = 4  # noise draws per held-out row


@torch.no_grad()
def validation_ambient_loss(
    denoiser: Denoiser,
    comps: SDXLComponents,
    batch: dict,
    train_sigmas: torch.Tensor,
    *,
    seed: int,
    device: torch.device,
) -> float:
    y = batch["latent"].to(device).repeat(REPEATS, 1, 1, 1)
    sigma_n = batch["sigma_n"].to(device).repeat(REPEATS)
    scale = comps.vae_scale_factor
    target_hw = (y.shape[-2] * scale, y.shape[-1] * scale)
    cond = conditioning(
        comps,
        list(batch["captions"]) * REPEATS,
        batch["original_size_hw"].repeat(REPEATS, 1),
        batch["crop_top_left"].repeat(REPEATS, 1),
        target_hw,
    )
    gen = torch.Generator().manual_seed(seed)
    sigma_t = sample_training_sigmas(
        sigma_n.cpu(), sigma_min=float(train_sigmas[0]), sigma_max=float(train_sigmas[-1]), generator=gen
    ).to(y)
    noise = torch.randn(y.shape, generator=gen).to(y)
    cond = {k: v.to(device) for k, v in cond.items()}
    losses = ambient_loss(
        denoiser, y, sigma_n, sigma_t, noise, weighting="x0", max_weight=MAX_WEIGHT, cond=cond
    )
    return losses.mean().item()
