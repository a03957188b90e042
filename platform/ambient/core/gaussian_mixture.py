"""Isotropic Gaussian mixtures: the data for which E[x0 | x_sigma] is known in closed form.

Used as ground truth by the tests and the exactness benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GaussianMixture:
    """sum_k w_k N(mean_k, std_k^2 I)."""

    means: Tensor  # (K, d)
    stds: Tensor  # (K,)
    weights: Tensor  # (K,), sums to 1

    def __post_init__(self) -> None:
        k = self.means.shape[0]
        if self.means.ndim != 2 or self.stds.shape != (k,) or self.weights.shape != (k,):
            raise ValueError("need means (K, d), stds (K,), weights (K,)")
        if (self.stds <= 0).any() or (self.weights < 0).any():
            raise ValueError("stds must be > 0 and weights >= 0")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @staticmethod
    def random(
        dim: int, components: int, *, scale: float = 1.0, std: float = 0.1, seed: int = 0
    ) -> GaussianMixture:
        """A mixture whose means are drawn uniformly in [-scale, scale]^d, equal weights."""
        g = torch.Generator().manual_seed(seed)
        means = (torch.rand(components, dim, generator=g, dtype=torch.float64) * 2 - 1) * scale
        stds = torch.full((components,), std, dtype=torch.float64)
        weights = torch.full((components,), 1.0 / components, dtype=torch.float64)
        return GaussianMixture(means, stds, weights)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        return self.means[comp] + self.stds[comp, None] * eps

    def noised(self, sigma: float) -> GaussianMixture:
        """The law of x0 + sigma eps: the same mixture with std^2 + sigma^2."""
        return GaussianMixture(self.means, (self.stds**2 + sigma**2).sqrt(), self.weights)

    def responsibilities(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """p(k | x_sigma = x), shape (B, K)."""
        x64 = x.to(self.means.dtype)
        s = torch.as_tensor(sigma, dtype=x64.dtype).reshape(-1, 1)  # (B or 1, 1)
        var = self.stds[None, :] ** 2 + s**2  # (B, K)
        sq = ((x64[:, None, :] - self.means[None]) ** 2).sum(-1)  # (B, K)
        logp = self.weights.log()[None] - 0.5 * sq / var - 0.5 * self.dim * var.log()
        return torch.softmax(logp, dim=1)

    def posterior_mean(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """E[x0 | x0 + sigma eps = x]; sigma scalar or per sample (B,)."""
        x64 = x.to(self.means.dtype)
        s = torch.as_tensor(sigma, dtype=x64.dtype).reshape(-1, 1)
        resp = self.responsibilities(x, sigma)  # (B, K)
        shrink = (self.stds[None, :] ** 2 / (self.stds[None, :] ** 2 + s**2))[..., None]  # (B, K, 1)
        comp_means = self.means[None] + shrink * (x64[:, None, :] - self.means[None])  # (B, K, d)
        return (resp[..., None] * comp_means).sum(1).to(x.dtype)
