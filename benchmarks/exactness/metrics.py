"""Metrics: sliced W2 to clean samples, the denoiser's error against the analytic posterior mean, and the
held-out validation ambient loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ambient.core import GaussianMixture, ambient_loss

from .config import Config
from .data import clean_samples


def sliced_w2(a: Tensor, b: Tensor, projections: int, seed: int) -> float:
    """Sliced Wasserstein-2: sqrt of the mean over random directions of W2^2 of the 1-D projections."""
    n = min(a.shape[0], b.shape[0])
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa = (a[:n].double() @ dirs).sort(dim=0).values
    pb = (b[:n].double() @ dirs).sort(dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def error_grids(sigma_n: float, levels: int) -> tuple[list[float], list[float]]:
    """Log-spaced noise levels strictly below sigma_n (down to sigma_n / 20) and above it (up to 4 sigma_n)."""
    below = torch.logspace(math.log10(sigma_n / 20), math.log10(sigma_n * 0.8), levels).tolist()
    above = torch.logspace(math.log10(sigma_n * 1.25), math.log10(sigma_n * 4), levels).tolist()
    return below, above


Denoise = Callable[..., Tensor]  # (x, sigma per row) -> x0_hat: a network or FullMixture


@torch.no_grad()
def denoiser_error(model: Denoise, gm: GaussianMixture, sigmas: Sequence[float], n: int, seed: int) -> float:
    """Mean over ``sigmas`` of E || h(x_sigma, sigma) - E[x0 | x_sigma] ||^2 / d on fresh clean x0."""
    gen = torch.Generator().manual_seed(seed)
    errors = []
    for sigma in sigmas:
        x = clean_samples(gm, n, seed + 1) + sigma * torch.randn(n, gm.dim, generator=gen)
        truth = gm.posterior_mean(x.double(), sigma).float()
        pred = model(x, torch.full((n,), sigma))
        errors.append(float(((pred - truth) ** 2).mean()))
    return sum(errors) / len(errors)


@torch.no_grad()
def validation_loss(model: Denoise, y_val: Tensor, sigma_n: float, cfg: Config) -> float:
    """Mean held-out ambient loss over the fixed levels ``validation_levels`` x sigma_n (fixed noise)."""
    gen = torch.Generator().manual_seed(cfg.seed + 13)
    losses = []
    for ratio in cfg.validation_levels:
        noise = torch.randn(y_val.shape, generator=gen)
        loss = ambient_loss(
            model, y_val, sigma_n, ratio * sigma_n, noise, weighting=cfg.weighting, sigma_data=cfg.sigma_data
        )
        losses.append(float(loss.mean()))
    return sum(losses) / len(losses)
