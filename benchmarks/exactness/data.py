"""The mixture-of-Gaussians data: the clean law, its samples, and the noisy training and validation sets."""

from __future__ import annotations

import torch
from torch import Tensor

from ambient.core import GaussianMixture, corrupt

from .config import Config


def make_mixture(cfg: Config) -> GaussianMixture:
    if isinstance(cfg.std, float):
        return GaussianMixture.random(cfg.dim, cfg.components, scale=cfg.scale, std=cfg.std, seed=cfg.seed)
    if len(cfg.std) != cfg.components:
        raise ValueError(f"--std: got {len(cfg.std)} values for {cfg.components} components (give 1 or K)")
    # The same means as the one-std mixture of this seed; only the widths differ.
    gm = GaussianMixture.random(cfg.dim, cfg.components, scale=cfg.scale, std=1.0, seed=cfg.seed)
    return GaussianMixture(gm.means, torch.tensor(cfg.std, dtype=gm.means.dtype), gm.weights)


def largest_std(cfg: Config) -> float:
    return cfg.std if isinstance(cfg.std, float) else max(cfg.std)


def clean_samples(gm: GaussianMixture, n: int, seed: int) -> Tensor:
    return gm.sample(n, generator=torch.Generator().manual_seed(seed)).float()


def noisy_training_set(x0: Tensor, sigma_n: float, seed: int) -> Tensor:
    """y = x0 + sigma_n z with z frozen per sample id (never redrawn)."""
    return corrupt(x0, sigma_n, range(x0.shape[0]), seed)


def validation_set(gm: GaussianMixture, sigma_n: float, cfg: Config) -> Tensor:
    """Held-out noisy data: clean draws and noise that training never sees (their own seeds)."""
    x0 = clean_samples(gm, cfg.validation_size, cfg.seed + 11)
    return noisy_training_set(x0, sigma_n, cfg.seed + 12)
