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


# Heun is left out of the spread bound: one trapezoid step across 80 -> 0.5 overshoots whatever the
# mode (a property of the integrator with so few steps, not of early stop); it is checked analytically below.
@pytest.mark.parametrize("method", ["euler", "posterior"])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_early_stop_with_few_steps_never_applies_the_tweedie_step_to_pure_noise(method, steps):
    """Any step count ends the schedule at sigma_n before the Tweedie step. Started at pure noise
    (sigma_max = 80), a finish at sigma_n on an unreduced sample would keep a spread of ~40 here."""
    g, sigma_n, s = gaussian(std=0.5), 0.5, 0.5
    x = core.generate(
        g.posterior_mean,
        (20_000, 2),
        mode="early_stop",
        sigma_n=sigma_n,
        num_steps=steps,
        method=method,
        generator=torch.Generator().manual_seed(3),
        dtype=torch.float64,
    )
    assert core.early_stop_schedule(steps, sigma_n)[-1].item() == pytest.approx(sigma_n)
    assert x.mean(0).tolist() == pytest.approx([0.25, 0.25], abs=0.05)
    assert (x.std(0) <= s).all(), x.std(0)  # E[x0 | .] of a Gaussian never spreads more than the data


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_one_step_samples_are_the_analytic_posterior_means(method):
    """Gaussian data: E[x0 | x_sigma] = mu + s^2 / (s^2 + sigma^2) (x - mu) in closed form."""
    g, s, mu, smax, sigma_n = gaussian(std=0.5), 0.5, 0.25, 80.0, 0.5

    def post(x, sigma):
        return mu + s**2 / (s**2 + sigma**2) * (x - mu)

    def start(seed):
        return (
            torch.randn((1000, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * smax
        )

    def run(mode, seed):
        gen = torch.Generator().manual_seed(seed)
        kw = {"num_steps": 1, "method": method, "generator": gen, "dtype": torch.float64}
        return core.generate(g.posterior_mean, (1000, 2), mode=mode, sigma_n=sigma_n, **kw)

    # Full: one step from sigma_max to 0 (Euler, as Heun's last step) is E[x0 | x_max].
    assert torch.allclose(run("full", 5), post(start(5), smax))
    # Early stop: one step from sigma_max down to sigma_n, then the Tweedie step at sigma_n.
    x = start(6)
    d = (x - post(x, smax)) / smax
    x_n = x + (sigma_n - smax) * d
    if method == "heun":
        d_n = (x_n - post(x_n, sigma_n)) / sigma_n
        x_n = x + (sigma_n - smax) * 0.5 * (d + d_n)
    assert torch.allclose(run("early_stop", 6), post(x_n, sigma_n))
