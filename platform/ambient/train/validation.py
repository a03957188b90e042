"""The validation ambient loss on held-out noisy rows: one definition for every run and every trial.

It is the ambient loss at each held-out row's *own* data level sigma_n (never the run's training
level), with the clean-space ("x0") weighting capped at 100, sigma_t drawn from EDM's log-normal
truncated above sigma_n, and the draws and noise fixed by a seed. Its expectation is minimised by the
true E[x0 | x_t] at every level, so runs trained at different noise levels, weights or learning rates
are compared on the same proper score.

The rows x REPEATS evaluations run ``micro_batch`` at a time (text encoders and UNet alike), so memory
does not grow with the number of held-out rows. A held-out set prepared with ``encode.text_embeddings``
is conditioned on the embeddings its rows carry, and needs no text encoders. The draws are made for the whole set at once and then
sliced, so the loss does not depend on the micro-batch (up to float rounding).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ambient.core import Denoiser, ambient_loss, sample_training_sigmas
from ambient.models.loading import SDXLComponents

from .batch import condition_on, conditioning, stored_embeddings

MAX_WEIGHT = 100.0
REPEATS = 4  # noise draws per held-out row
DEFAULT_MICRO_BATCH = 8  # evaluations (rows x draws) per UNet call


@torch.no_grad()
def validation_ambient_loss(
    denoiser: Denoiser,
    comps: SDXLComponents,
    batch: dict,
    train_sigmas: torch.Tensor,
    *,
    seed: int,
    device: torch.device,
    micro_batch: int = DEFAULT_MICRO_BATCH,
) -> float:
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    latents = batch["latent"]
    rows = len(latents)
    total = rows * REPEATS  # evaluation i is row i % rows, as batch.repeat(REPEATS) orders them
    gen = torch.Generator().manual_seed(seed)
    sigma_t = sample_training_sigmas(
        batch["sigma_n"].float().cpu().repeat(REPEATS),
        sigma_min=float(train_sigmas[0]),
        sigma_max=float(train_sigmas[-1]),
        generator=gen,
    )
    noise = torch.randn((total, *latents.shape[1:]), generator=gen)
    loss_sum = 0.0
    for lo in range(0, total, micro_batch):
        index = torch.arange(lo, min(lo + micro_batch, total))
        losses = _chunk_losses(denoiser, comps, batch, index % rows, sigma_t[index], noise[index], device)
        loss_sum += float(losses.sum())
    return loss_sum / total


def _chunk_losses(
    denoiser: Denoiser,
    comps: SDXLComponents,
    batch: dict,
    rows: Tensor,
    sigma_t: Tensor,
    noise: Tensor,
    device: torch.device,
) -> Tensor:
    """Per-evaluation ambient losses of the held-out ``rows`` with their draws."""
    y = batch["latent"][rows].to(device)
    sigma_n = batch["sigma_n"][rows].to(device)
    scale = comps.vae_scale_factor
    target_hw = (y.shape[-2] * scale, y.shape[-1] * scale)
    sizes, crops = batch["original_size_hw"][rows], batch["crop_top_left"][rows]
    stored = stored_embeddings(batch)
    if stored is not None:
        cond = condition_on(stored.rows(rows), sizes, crops, target_hw)
    else:
        cond = conditioning(comps, [batch["captions"][i] for i in rows.tolist()], sizes, crops, target_hw)
    cond = {k: v.to(device) for k, v in cond.items()}
    return ambient_loss(
        denoiser,
        y,
        sigma_n,
        sigma_t.to(y),
        noise.to(y),
        weighting="x0",
        max_weight=MAX_WEIGHT,
        cond=cond,
    )
