"""The EM reference: a full-covariance mixture fitted to the noisy data under cov >= sigma_n^2 I, then
deconvolved. It knows the family of the truth, so it separates missing information from the method."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .config import Config


@dataclass(frozen=True)
class FullMixture:
    """sum_k w_k N(mean_k, cov_k), float64; covariances held as eigenpairs cov_k = V diag(lam) V^T."""

    weights: Tensor  # (K,)
    means: Tensor  # (K, d)
    eigvals: Tensor  # (K, d)
    eigvecs: Tensor  # (K, d, d), columns are eigenvectors

    @staticmethod
    def from_covariances(weights: Tensor, means: Tensor, covs: Tensor, floor: float) -> FullMixture:
        """Eigenvalues of each covariance floored at ``floor`` (the projection onto cov >= floor I)."""
        lam, vec = torch.linalg.eigh(0.5 * (covs + covs.transpose(1, 2)))
        return FullMixture(weights, means, lam.clamp(min=floor), vec)

    @property
    def covariances(self) -> Tensor:
        return self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(1, 2)

    def _joint(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """Coordinates z of x - mean_k in each eigenbasis (B, K, d), the variances lam + sigma^2 there, and
        log w_k + log N(x; mean_k, cov_k + sigma^2 I) up to the constant -d/2 log(2 pi), (B, K)."""
        x64 = x.double()
        s2 = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1) ** 2  # (B or 1, 1, 1)
        z = torch.einsum("bkd,kde->bke", x64[:, None, :] - self.means[None], self.eigvecs)
        var = self.eigvals[None] + s2  # (B, K, d)
        logp = self.weights.clamp(min=1e-300).log()[None] - 0.5 * ((z**2 / var) + var.log()).sum(-1)
        return z, var, logp

    def log_likelihood(self, x: Tensor) -> float:
        """Mean log-density of the rows of x."""
        logp = self._joint(x, 0.0)[2]
        return float(torch.logsumexp(logp, dim=1).mean() - 0.5 * x.shape[1] * math.log(2 * math.pi))

    def posterior_mean(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """E[x0 | x0 + sigma eps = x] for x0 from this mixture."""
        z, var, logp = self._joint(x, sigma)
        logr = torch.log_softmax(logp, dim=1)
        shrunk = torch.einsum("kde,bke->bkd", self.eigvecs, (self.eigvals[None] / var) * z)
        return (logr.exp()[..., None] * (self.means[None] + shrunk)).sum(1).to(x.dtype)

    def __call__(self, x: Tensor, sigma: Tensor, **_: object) -> Tensor:
        """A denoiser: the posterior mean (so the metrics and the ambient loss take it like a model)."""
        return self.posterior_mean(x, sigma)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        scaled = torch.einsum("nde,ne->nd", self.eigvecs[comp], self.eigvals[comp].sqrt() * eps)
        return self.means[comp] + scaled


def _kmeans_pp(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to the squared distance."""
    centres = [x[torch.randint(x.shape[0], (1,), generator=gen)].squeeze(0)]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centres)).min(dim=1).values ** 2
        centres.append(x[torch.multinomial(d2 / d2.sum(), 1, generator=gen)].squeeze(0))
    return torch.stack(centres)


def fit_em(
    y: Tensor,
    components: int,
    noise_var: float,
    *,
    restarts: int = 3,
    iters: int = 300,
    tol: float = 1e-6,
    seed: int = 0,
) -> FullMixture:
    """Maximum-likelihood K-component mixture of y by EM with every covariance >= noise_var I.

    Flooring the eigenvalues of the weighted sample covariance at noise_var is the exact constrained M
    step (it maximises the Gaussian likelihood over cov >= noise_var I), so each iteration still raises
    the likelihood. The best of ``restarts`` k-means++ starts is kept.
    """
    x = y.double()
    n, d = x.shape
    floor = max(noise_var, 1e-8)
    gen = torch.Generator().manual_seed(seed)
    best: tuple[float, FullMixture] | None = None
    for _ in range(restarts):
        spread = torch.cov(x.T).reshape(d, d)
        covs = spread.expand(components, d, d).clone()
        weights = torch.full((components,), 1.0 / components, dtype=torch.float64)
        mix = FullMixture.from_covariances(weights, _kmeans_pp(x, components, gen), covs, floor)
        previous = -math.inf
        for _ in range(iters):
            logp = mix._joint(x, 0.0)[2]
            current = float(torch.logsumexp(logp, dim=1).mean())  # of the current parameters
            if current - previous < tol:
                break
            previous = current
            r = torch.softmax(logp, dim=1)  # (n, K)
            nk = r.sum(0) + 1e-12
            means = (r.T @ x) / nk[:, None]
            covs = (
                torch.stack(
                    [((x - means[k]) * r[:, k : k + 1]).T @ (x - means[k]) for k in range(components)]
                )
                / nk[:, None, None]
            )
            mix = FullMixture.from_covariances(nk / n, means, covs, floor)
        score = mix.log_likelihood(x)
        if best is None or score > best[0]:
            best = (score, mix)
    assert best is not None
    return best[1]


def deconvolve(noisy: FullMixture, sigma_n: float, floor: float = 1e-8) -> FullMixture:
    """The clean mixture: sigma_n^2 subtracted from every covariance eigenvalue (floored at ``floor``)."""
    return replace(noisy, eigvals=(noisy.eigvals - sigma_n**2).clamp(min=floor))


def em_reference(y: Tensor, sigma_n: float, cfg: Config) -> FullMixture:
    noisy = fit_em(
        y, cfg.components, sigma_n**2, restarts=cfg.em_restarts, iters=cfg.em_iters, seed=cfg.seed + 9
    )
    return deconvolve(noisy, sigma_n)
