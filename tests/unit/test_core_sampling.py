"""Samplers against Gaussian data, where the exact denoiser and the target law are known."""

import math

import pytest
import torch

from ambient import core


def gaussian(std=0.5, d=2):
    return core.GaussianMixture(
        torch.zeros(1, d, dtype=torch.float64) + 0.25, torch.tensor([std], dtype=torch.float64), torch.ones(1)
    )


@pytest.mark.parametrize("method,steps", [("heun", 24), ("euler", 200), ("posterior", 200)])
def test_full_sampling_with_the_exact_denoiser_recovers_the_data_law(method, steps):
    g = gaussian()
    x = core.generate(
        g.posterior_mean,
        (20_000, 2),
        mode="full",
        num_steps=steps,
        method=method,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    assert x.mean(0).tolist() == pytest.approx([0.25, 0.25], abs=0.02)
    assert x.std(0).tolist() == pytest.approx([0.5, 0.5], rel=0.04)


def test_early_stop_returns_the_tweedie_estimate_at_sigma_n():
    g, sigma_n = gaussian(std=0.5), 0.5
    x = core.generate(
        g.posterior_mean,
        (20_000, 2),
        mode="early_stop",
        sigma_n=sigma_n,
        num_steps=24,
        generator=torch.Generator().manual_seed(1),
        dtype=torch.float64,
    )
    # x_{sigma_n} ~ N(mu, s^2 + sigma_n^2); E[x0 | x] shrinks it by s^2 / (s^2 + sigma_n^2).
    want_std = 0.5**2 / math.sqrt(0.5**2 + sigma_n**2)
    assert x.std(0).tolist() == pytest.approx([want_std, want_std], rel=0.04)


def test_posterior_step_is_the_gaussian_bridge():
    x0 = torch.zeros(50_000, 1, dtype=torch.float64)
    x = torch.full_like(x0, 2.0)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    nxt = core.posterior_step(x, x0, 1.0, 0.5, noise)
    assert nxt.mean().item() == pytest.approx(0.5, abs=0.01)  # x0 + (s'^2/s^2)(x - x0)
    assert nxt.std().item() == pytest.approx(0.5 * math.sqrt(1 - 0.25), rel=0.02)
    with pytest.raises(ValueError, match="sigma_next <= sigma_cur"):
        core.posterior_step(x, x0, 0.5, 1.0, noise)


def test_early_stop_needs_a_positive_sigma_n():
    with pytest.raises(ValueError, match="sigma_n > 0"):
        core.early_stop_schedule(8, 0.0)
