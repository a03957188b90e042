"""Reverse samplers in VE form: Euler/Heun on a Karras schedule, the stochastic posterior step,
and early stop at sigma_n finished with one Tweedie step."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import as_sigma, same_shape
from .ambient import Denoiser
from .conversions import karras_sigmas

# The mode rules live with SamplingSpec; re-exported here, where callers have imported them from.
from .sampling_spec import (  # noqa: F401
    Method,
    SamplingMode,
    default_sampling_mode,
    resolve_sampling_mode,
    stop_level,
)


def posterior_step(
    x: Tensor, x0_hat: Tensor, sigma_cur: Tensor | float, sigma_next: Tensor | float, noise: Tensor
) -> Tensor:
    """Draw x_next ~ p(x_{sigma_next} | x_{sigma_cur} = x, x0 = x0_hat) (the Gaussian bridge):

    x_next = x0_hat + (s_next^2 / s_cur^2)(x - x0_hat) + s_next sqrt(1 - s_next^2 / s_cur^2) z.
    """
    same_shape(x0_hat, x, "x0_hat", "x")
    same_shape(noise, x, "noise", "x")
    sc = as_sigma(sigma_cur, x, "sigma_cur")
    sn = as_sigma(sigma_next, x, "sigma_next")
    if (sn > sc).any() or (sc == 0).any():
        raise ValueError("posterior_step needs 0 <= sigma_next <= sigma_cur and sigma_cur > 0")
    r = sn**2 / sc**2
    return x0_hat + r * (x - x0_hat) + sn * (1 - r).clamp(min=0).sqrt() * noise


def _level(sigmas: Tensor, i: int, batch: int, like: Tensor) -> Tensor:
    s = sigmas[i].to(like.dtype).to(like.device)
    return s.expand(batch) if s.ndim == 0 else s


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    method: Method = "heun",
    generator: torch.Generator | None = None,
    cond: dict | None = None,
) -> Tensor:
    """Integrate from sigmas[0] down to sigmas[-1]. ``sigmas`` is (N,) or per sample (N, B),
    decreasing; a final 0 returns the clean estimate. ``x`` starts at noise level sigmas[0]."""
    cond = cond or {}
    batch = x.shape[0]
    if sigmas.ndim == 2 and sigmas.shape[1] != batch:
        raise ValueError(f"sigmas has {sigmas.shape[1]} columns but the batch has {batch} samples")
    if method not in ("euler", "heun", "posterior"):
        raise ValueError(f"method must be euler, heun or posterior, got {method!r}")
    for i in range(len(sigmas) - 1):
        s_cur = _level(sigmas, i, batch, x)
        s_next = _level(sigmas, i + 1, batch, x)
        x0_hat = denoiser(x, s_cur, **cond)
        if method == "posterior":
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = posterior_step(x, x0_hat, s_cur, s_next, noise)
            continue
        sc = as_sigma(s_cur, x, "sigma")
        sn = as_sigma(s_next, x, "sigma")
        d = (x - x0_hat) / sc
        x_euler = x + (sn - sc) * d
        if method == "heun" and bool((s_next > 0).all()):
            d_next = (x_euler - denoiser(x_euler, s_next, **cond)) / sn
            x = x + (sn - sc) * 0.5 * (d + d_next)
        else:
            x = x_euler
    return x


def full_schedule(
    num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> Tensor:
    """Karras schedule with a final 0: sampling all the way to a clean sample."""
    s = karras_sigmas(num_steps, sigma_min, sigma_max, rho)
    return torch.cat([s, s.new_zeros(1)])


def early_stop_schedule(
    num_steps: int, sigma_n: Tensor | float, sigma_max: float = 80.0, rho: float = 7.0
) -> Tensor:
    """Karras schedule from sigma_max ending exactly at sigma_n (per sample if sigma_n is a tensor).

    ``num_steps`` levels, so num_steps - 1 sampler steps, and the Tweedie step at sigma_n makes
    num_steps denoiser evaluations (Euler). It never has fewer than two levels: with num_steps = 1 a
    lone sigma_max would leave the Tweedie step at sigma_n applied to pure noise at sigma_max, so one
    sampler step down to sigma_n is always taken (num_steps 1 and 2 sample alike).
    """
    sn = torch.as_tensor(sigma_n, dtype=torch.float64)
    if (sn <= 0).any():
        raise ValueError("early stop needs sigma_n > 0; sample clean models with full_schedule")
    return karras_sigmas(max(num_steps, 2), sn, sigma_max, rho)


@torch.no_grad()
def generate(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    *,
    mode: SamplingMode = "full",
    sigma_n: float = 0.0,
    num_steps: int = 32,
    method: Method = "heun",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    cond: dict | None = None,
) -> Tensor:
    """Draw samples from pure noise. "full" samples to sigma = 0 (a consistent model);
    "early_stop" samples down to sigma_n and finishes with one Tweedie step x0 = h(x_{sigma_n}, sigma_n)
    (a model trained only above sigma_n is not trusted below it)."""
    if mode not in ("full", "early_stop"):
        raise ValueError(f"mode must be 'full' or 'early_stop', got {mode!r}")
    sigma_stop = stop_level(mode, sigma_n)
    x = torch.randn(shape, generator=generator, dtype=dtype, device=device) * sigma_max
    if sigma_stop == 0:
        return sample(
            denoiser,
            x,
            full_schedule(num_steps, sigma_min, sigma_max, rho),
            method=method,
            generator=generator,
            cond=cond,
        )
    sched = early_stop_schedule(num_steps, sigma_stop, sigma_max, rho)
    x = sample(denoiser, x, sched, method=method, generator=generator, cond=cond)
    sn = torch.full((shape[0],), sigma_stop, dtype=dtype, device=device)
    return denoiser(x, sn, **(cond or {}))
