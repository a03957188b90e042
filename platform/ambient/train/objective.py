"""The training objective: ambient loss above sigma_n plus lambda x consistency loss below it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ambient.core import (
    Denoiser,
    ambient_loss,
    consistency_loss,
    sample_training_sigmas,
    sample_training_timesteps,
)

from .batch import ModelInputs
from .config import FinetuneConfig


@dataclass
class LossParts:
    total: Tensor
    ambient: float
    consistency: float | None  # None on steps where the consistency loss did not run


def draw_sigma_t(
    cfg: FinetuneConfig, sigma_n: Tensor, train_sigmas: Tensor, generator: torch.Generator
) -> Tensor:
    """Training levels strictly above each row's sigma_n."""
    loss = cfg.loss
    if loss.sigma_sampling == "timesteps":
        t = sample_training_timesteps(sigma_n.cpu(), train_sigmas, generator=generator)
        return train_sigmas[t].to(sigma_n)
    return sample_training_sigmas(
        sigma_n.cpu(),
        distribution=loss.sigma_sampling,
        p_mean=loss.p_mean,
        p_std=loss.p_std,
        sigma_min=float(train_sigmas[0]),
        sigma_max=float(train_sigmas[-1]),
        generator=generator,
    ).to(sigma_n)


def training_loss(
    denoiser: Denoiser,
    inputs: ModelInputs,
    cfg: FinetuneConfig,
    step: int,
    train_sigmas: Tensor,
    generator: torch.Generator,
) -> LossParts:
    sigma_t = draw_sigma_t(cfg, inputs.sigma_n, train_sigmas, generator)
    noise = torch.randn(inputs.y.shape, generator=generator).to(inputs.y)
    amb = ambient_loss(
        denoiser,
        inputs.y,
        inputs.sigma_n,
        sigma_t,
        noise,
        weighting=cfg.loss.weighting,
        max_weight=cfg.loss.max_weight,
        cond=inputs.cond,
    ).mean()
    settings = cfg.consistency.settings()
    if not settings.active(step):
        return LossParts(total=amb, ambient=amb.item(), consistency=None)
    cons = consistency_loss(
        denoiser,
        inputs.y,
        inputs.sigma_n,
        settings,
        cond=inputs.cond,
        generator=generator,
        sigma_min=float(train_sigmas[0]),  # the model has no level below its table's first
    )
    return LossParts(total=amb + settings.weight * cons, ambient=amb.item(), consistency=cons.item())
