"""Noise-process conversions: VP <-> VE, prediction types, latent scaling, EDM preconditioning.

The ambient math runs once, in the variance-exploding form x_sigma = x0 + sigma * eps. SDXL is
variance preserving, x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps, which is the same process with
x_ve = x_vp / sqrt(abar) and sigma = sqrt((1 - abar) / abar).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import as_sigma


def ve_sigmas(alphas_cumprod: Tensor) -> Tensor:
    """VE sigma of every discrete timestep: sqrt((1 - abar) / abar) (diffusers' Euler sigmas)."""
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if ((ac <= 0) | (ac > 1)).any():
        raise ValueError("alphas_cumprod must lie in (0, 1]")
    return ((1 - ac) / ac).sqrt()


def sdxl_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """The SDXL ("scaled_linear") training schedule's cumulative alphas, float64."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def alpha_bar_from_sigma(sigma: Tensor | float) -> Tensor:
    s = torch.as_tensor(sigma)
    return 1.0 / (1.0 + s**2)


def sigma_from_alpha_bar(alpha_bar: Tensor | float) -> Tensor:
    ab = torch.as_tensor(alpha_bar)
    return ((1 - ab) / ab).sqrt()


def vp_to_ve(x_vp: Tensor, sigma: Tensor | float) -> Tensor:
    """x_ve = x_vp / sqrt(abar) = x_vp * sqrt(1 + sigma^2)."""
    s = as_sigma(sigma, x_vp, "sigma")
    return x_vp * (1 + s**2).sqrt()


def ve_to_vp(x_ve: Tensor, sigma: Tensor | float) -> Tensor:
    """x_vp = x_ve * sqrt(abar) = x_ve / sqrt(1 + sigma^2)."""
    s = as_sigma(sigma, x_ve, "sigma")
    return x_ve / (1 + s**2).sqrt()


def sigma_to_timestep(sigma: Tensor, train_sigmas: Tensor) -> Tensor:
    """Continuous timestep for a VE sigma, interpolating log-sigma over the training table.

    ``train_sigmas[t]`` is the sigma of discrete timestep t (increasing in t); this is the
    inverse diffusers' EulerDiscreteScheduler uses, so a table sigma maps exactly to its index.
    """
    table = torch.as_tensor(train_sigmas, dtype=torch.float64, device=sigma.device)
    log_s = sigma.to(torch.float64).clamp(min=table[0], max=table[-1]).log()
    log_table = table.log()
    idx = torch.searchsorted(log_table, log_s, right=False).clamp(1, len(table) - 1)
    lo, hi = log_table[idx - 1], log_table[idx]
    frac = ((log_s - lo) / (hi - lo)).clamp(0, 1)
    return (idx - 1).to(torch.float64) + frac


def timestep_to_sigma(timestep: Tensor | int | float, train_sigmas: Tensor) -> Tensor:
    """VE sigma at a (possibly fractional) timestep, log-linear between table entries."""
    table = torch.as_tensor(train_sigmas, dtype=torch.float64)
    t = torch.as_tensor(timestep, dtype=torch.float64)
    if (t < 0).any() or (t > len(table) - 1).any():
        raise ValueError(f"timestep must lie in [0, {len(table) - 1}], got {t.flatten()[:8].tolist()}")
    lo = t.floor().long().clamp(max=len(table) - 2)
    frac = t - lo
    log_table = table.log()
    return (log_table[lo] * (1 - frac) + log_table[lo + 1] * frac).exp()


# ---- prediction types (all in VE coordinates: x = x0 + sigma * eps) -------------------------------


def x0_from_eps(x: Tensor, eps: Tensor, sigma: Tensor | float) -> Tensor:
    return x - as_sigma(sigma, x, "sigma") * eps


def eps_from_x0(x: Tensor, x0: Tensor, sigma: Tensor | float) -> Tensor:
    s = as_sigma(sigma, x, "sigma")
    if (s == 0).any():
        raise ValueError("eps is undefined at sigma = 0")
    return (x - x0) / s


def x0_from_v(x: Tensor, v: Tensor, sigma: Tensor | float) -> Tensor:
    """diffusers' v = sqrt(abar) eps - sqrt(1 - abar) x0, with x the VE sample."""
    s = as_sigma(sigma, x, "sigma")
    # x_vp = sqrt(abar) x; x0 = sqrt(abar) x_vp - sqrt(1 - abar) v.
    return x / (1 + s**2) - s / (1 + s**2).sqrt() * v


def v_from_x0(x: Tensor, x0: Tensor, sigma: Tensor | float) -> Tensor:
    s = as_sigma(sigma, x, "sigma")
    if (s == 0).any():
        raise ValueError("v is undefined at sigma = 0")
    # v = sqrt(abar) eps - sqrt(1 - abar) x0, eps = (x - x0) / sigma and sqrt(1 - abar) = sigma sqrt(abar).
    return ((x - x0) / s - s * x0) / (1 + s**2).sqrt()


def x0_from_prediction(x: Tensor, prediction: Tensor, sigma: Tensor | float, prediction_type: str) -> Tensor:
    """Clean estimate from a network output of the given diffusers ``prediction_type``."""
    if prediction_type == "epsilon":
        return x0_from_eps(x, prediction, sigma)
    if prediction_type == "v_prediction":
        return x0_from_v(x, prediction, sigma)
    if prediction_type == "sample":
        return prediction
    raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")


# ---- latent scaling ------------------------------------------------------------------------------


def scale_latents(latents: Tensor, scaling_factor: float, shift_factor: float | None = None) -> Tensor:
    """VAE latent distribution -> the diffusion model's latent space (as diffusers pipelines do)."""
    shifted = latents - shift_factor if shift_factor is not None else latents
    return shifted * scaling_factor


def unscale_latents(latents: Tensor, scaling_factor: float, shift_factor: float | None = None) -> Tensor:
    out = latents / scaling_factor
    return out + shift_factor if shift_factor is not None else out


# ---- EDM preconditioning -------------------------------------------------------------------------


@dataclass(frozen=True)
class EDMScalings:
    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


def edm_scalings(sigma: Tensor, sigma_data: float = 0.5) -> EDMScalings:
    """Karras et al. (2022) preconditioning: D(x) = c_skip x + c_out F(c_in x, c_noise)."""
    s = torch.as_tensor(sigma)
    if (s < 0).any():
        raise ValueError("sigma must be >= 0")
    sd2 = sigma_data**2
    denom = (s**2 + sd2).sqrt()
    return EDMScalings(
        c_skip=sd2 / (s**2 + sd2),
        c_out=s * sigma_data / denom,
        c_in=1 / denom,
        c_noise=s.clamp(min=1e-20).log() / 4,
    )


def edm_loss_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2: unit-variance x0 error."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def karras_sigmas(
    num_steps: int, sigma_min: float | Tensor, sigma_max: float | Tensor, rho: float = 7.0
) -> Tensor:
    """EDM's schedule, decreasing from sigma_max to sigma_min, ``num_steps`` entries (no final 0).

    sigma_min / sigma_max may be per-sample 1-D tensors; the result is then (num_steps, B).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    lo = torch.as_tensor(sigma_min, dtype=torch.float64)
    hi = torch.as_tensor(sigma_max, dtype=torch.float64)
    if (lo <= 0).any() or (hi < lo).any():
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {lo.tolist()} and {hi.tolist()}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    if lo.ndim or hi.ndim:
        ramp = ramp[:, None]
    inv = 1.0 / rho
    return (hi**inv + ramp * (lo**inv - hi**inv)) ** rho


def log_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))
