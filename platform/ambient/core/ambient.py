"""The ambient (double-Tweedie) loss: learn E[x0 | x_t] from samples that carry noise sigma_n.

Data y = x0 + sigma_n z. For sigma_t > sigma_n, x_t = y + sqrt(sigma_t^2 - sigma_n^2) z2 is
distributed as x0 + sigma_t eps, and Tweedie's formula applied twice gives

    E[y | x_t] = (sigma_n^2 / sigma_t^2) x_t + (1 - sigma_n^2 / sigma_t^2) E[x0 | x_t],

so regressing that combination of the network's clean prediction on y trains the clean denoiser.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from ._checks import as_sigma, flat_mean, per_sample, same_shape
from .conversions import edm_loss_weight, log_normal_cdf

# A denoiser maps (x_sigma, sigma[B], **conditioning) to its estimate of E[x0 | x_sigma].
Denoiser = Callable[..., Tensor]
Weighting = Literal["none", "x0"]


def _check_above(sigma_t: Tensor, sigma_n: Tensor) -> None:
    bad = (sigma_t < sigma_n).reshape(-1)
    if bad.any():
        idx = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"sigma_t must be >= sigma_n for every sample; violated at samples {idx} "
            f"(sigma_t={sigma_t.reshape(-1)[idx].tolist()}, sigma_n={sigma_n.reshape(-1)[idx].tolist()})"
        )


def add_ambient_noise(y: Tensor, sigma_n: Tensor | float, sigma_t: Tensor | float, noise: Tensor) -> Tensor:
    """x_t = y + sqrt(sigma_t^2 - sigma_n^2) * noise: the noisy sample carried up to level sigma_t."""
    same_shape(noise, y, "noise", "y")
    sn = as_sigma(sigma_n, y, "sigma_n")
    st = as_sigma(sigma_t, y, "sigma_t")
    sn, st = torch.broadcast_tensors(sn, st)
    _check_above(st, sn)
    return y + (st**2 - sn**2).sqrt() * noise


def noisy_prediction(x_t: Tensor, x0_hat: Tensor, sigma_t: Tensor | float, sigma_n: Tensor | float) -> Tensor:
    """Double Tweedie: the estimate of E[y | x_t] implied by a clean prediction x0_hat ~ E[x0 | x_t]."""
    same_shape(x0_hat, x_t, "x0_hat", "x_t")
    sn = as_sigma(sigma_n, x_t, "sigma_n")
    st = as_sigma(sigma_t, x_t, "sigma_t")
    sn, st = torch.broadcast_tensors(sn, st)
    _check_above(st, sn)
    if (st == 0).any():
        raise ValueError("sigma_t must be > 0")
    ratio = sn**2 / st**2
    return ratio * x_t + (1 - ratio) * x0_hat


def ambient_weight(
    sigma_t: Tensor,
    sigma_n: Tensor,
    weighting: Weighting = "none",
    sigma_data: float = 0.5,
    max_weight: float = 1e4,
) -> Tensor:
    """Per-sample loss weight. "none": 1 (the authors' SDXL code). "x0": EDM's lambda(sigma_t) times
    sigma_t^4 / (sigma_t^2 - sigma_n^2)^2, which turns the error in y-space into the error of the clean
    prediction; it is infinite at sigma_t = sigma_n, hence the cap."""
    if weighting == "none":
        return torch.ones_like(sigma_t)
    if weighting == "x0":
        gap = (sigma_t**2 - sigma_n**2).clamp(min=1e-20)
        w = edm_loss_weight(sigma_t, sigma_data) * sigma_t**4 / gap**2
        return w.clamp(max=max_weight)
    raise ValueError(f"weighting must be 'none' or 'x0', got {weighting!r}")


def ambient_loss(
    denoiser: Denoiser,
    y: Tensor,
    sigma_n: Tensor | float,
    sigma_t: Tensor | float,
    noise: Tensor | None = None,
    *,
    weighting: Weighting = "none",
    sigma_data: float = 0.5,
    max_weight: float = 1e4,
    cond: dict | None = None,
) -> Tensor:
    """Per-sample ambient loss w * || E_hat[y | x_t] - y ||^2 (mean over non-batch dims).

    With sigma_n = 0 it is ordinary denoising score matching. ``noise`` is drawn fresh when omitted.
    """
    batch = y.shape[0]
    sn = per_sample(sigma_n, batch, y, "sigma_n")
    st = per_sample(sigma_t, batch, y, "sigma_t")
    if noise is None:
        noise = torch.randn_like(y)
    x_t = add_ambient_noise(y, sn, st, noise)
    x0_hat = denoiser(x_t, st, **(cond or {}))
    y_hat = noisy_prediction(x_t, x0_hat, st, sn)
    w = ambient_weight(st, sn, weighting, sigma_data, max_weight)
    return w * flat_mean((y_hat - y) ** 2)


def sample_training_sigmas(
    sigma_n: Tensor,
    *,
    distribution: Literal["lognormal", "log_uniform"] = "lognormal",
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    margin: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Training noise levels sigma_t > sigma_n (1 + margin), one per sample.

    Both draw from (max(sigma_min, sigma_n (1 + margin)), sigma_max): a model has no timestep outside
    its (sigma_min, sigma_max). "lognormal": EDM's log-normal(p_mean, p_std) truncated to that range,
    drawn exactly by inverting the CDF. "log_uniform": log-uniform on it.
    """
    sn = torch.as_tensor(sigma_n, dtype=torch.float32).reshape(-1)
    if (sn < 0).any() or not torch.isfinite(sn).all():
        raise ValueError("sigma_n must be finite and >= 0")
    floor = torch.clamp(sn * (1 + margin), min=sigma_min)
    u = torch.rand(sn.shape, generator=generator, dtype=torch.float64)
    if distribution == "lognormal":
        lo = torch.where(
            floor > 0,
            log_normal_cdf((floor.double().clamp(min=1e-30).log() - p_mean) / p_std),
            torch.zeros_like(u),
        )
        hi = float(log_normal_cdf(torch.tensor((math.log(sigma_max) - p_mean) / p_std, dtype=torch.float64)))
        if (lo >= hi).any():
            raise ValueError(f"sigma_n (1 + margin) must be < sigma_max={sigma_max}")
        q = (lo + u * (hi - lo)).clamp(1e-12, 1 - 1e-12)
        z = math.sqrt(2) * torch.erfinv(2 * q - 1)
        out = (p_mean + p_std * z).exp()
        return torch.maximum(out, floor.double()).clamp(max=sigma_max).float()
    if distribution == "log_uniform":
        lo = floor.double()
        if (lo >= sigma_max).any():
            raise ValueError(f"sigma_n (1 + margin) must be < sigma_max={sigma_max}")
        log_lo, log_hi = lo.log(), math.log(sigma_max)
        return (log_lo + u * (log_hi - log_lo)).exp().float()
    raise ValueError(f"distribution must be 'lognormal' or 'log_uniform', got {distribution!r}")


def sample_training_timesteps(
    sigma_n: Tensor, train_sigmas: Tensor, *, margin: float = 1e-3, generator: torch.Generator | None = None
) -> Tensor:
    """Discrete training timesteps, uniform over those whose sigma exceeds sigma_n (1 + margin).

    The authors' SDXL recipe: timesteps drawn from [t_n, T). Returns long indices into train_sigmas.
    """
    table = torch.as_tensor(train_sigmas, dtype=torch.float64)
    sn = torch.as_tensor(sigma_n, dtype=torch.float64).reshape(-1)
    first = torch.searchsorted(table, sn * (1 + margin), right=True)
    if (first >= len(table)).any():
        raise ValueError(f"sigma_n exceeds the largest training sigma {table[-1].item():.4g}")
    u = torch.rand(sn.shape, generator=generator, dtype=torch.float64)
    return (first + (u * (len(table) - first)).floor().long()).clamp(max=len(table) - 1)
