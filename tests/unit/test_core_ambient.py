"""The ambient loss against closed-form answers for Gaussian and mixture-of-Gaussian data."""

import math

import pytest
import torch

from ambient import core

GEN = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


def mixture(k=4, d=2, std=0.15, seed=0):
    return core.GaussianMixture.random(d, k, scale=1.0, std=std, seed=seed)


def single_gaussian(d=3, std=0.7):
    return core.GaussianMixture(
        torch.full((1, d), 0.3, dtype=torch.float64), torch.tensor([std], dtype=torch.float64), torch.ones(1)
    )


@pytest.mark.parametrize("make", [single_gaussian, mixture], ids=["gaussian", "mixture"])
@pytest.mark.parametrize("sigma_n,sigma_t", [(0.3, 0.5), (0.5, 2.0), (1.0, 1.1)])
def test_double_tweedie_of_exact_posterior_is_exact_noisy_posterior(make, sigma_n, sigma_t):
    gmm = make()
    x_t = gmm.noised(sigma_t).sample(2000, GEN(1))
    x0_mean = gmm.posterior_mean(x_t, sigma_t)
    got = core.noisy_prediction(x_t, x0_mean, sigma_t, sigma_n)
    # y = x0 + sigma_n z is itself a mixture with inflated stds; x_t is y plus noise of the gap.
    want = gmm.noised(sigma_n).posterior_mean(x_t, math.sqrt(sigma_t**2 - sigma_n**2))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # ...and it is not simply the clean posterior (the test would pass vacuously otherwise).
    assert (got - x0_mean).abs().max() > 1e-3


def _population_loss(gmm, denoiser, sigma_n, sigma_t, n=200_000, seed=0):
    g = GEN(seed)
    x0 = gmm.sample(n, g)
    y = x0 + sigma_n * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    return core.ambient_loss(denoiser, y, sigma_n, sigma_t, noise).mean().item()


@pytest.mark.parametrize("sigma_n,sigma_t", [(0.0, 0.4), (0.4, 0.6), (0.8, 1.5)])
def test_population_ambient_loss_is_minimised_by_the_clean_posterior(sigma_n, sigma_t):
    gmm = mixture()
    exact = gmm.posterior_mean
    delta = torch.tensor([0.2, -0.1], dtype=torch.float64)
    shifted = lambda x, s: gmm.posterior_mean(x, s) + delta  # noqa: E731
    # A denoiser that ignores the data noise: the posterior of the *noisy* distribution.
    naive = lambda x, s: gmm.noised(sigma_n).posterior_mean(x, s)  # noqa: E731
    base = _population_loss(gmm, exact, sigma_n, sigma_t)
    # With common random numbers the excess loss is exactly (1 - r)^2 ||delta||^2 / d in expectation.
    r = sigma_n**2 / sigma_t**2
    excess = _population_loss(gmm, shifted, sigma_n, sigma_t) - base
    assert excess == pytest.approx((1 - r) ** 2 * delta.pow(2).mean().item(), rel=0.08)
    if sigma_n > 0:
        assert _population_loss(gmm, naive, sigma_n, sigma_t) > base * 1.001


def test_ambient_loss_with_zero_sigma_n_is_denoising_score_matching():
    gmm = mixture()
    x0 = gmm.sample(64, GEN(2))
    noise = torch.randn(x0.shape, generator=GEN(3), dtype=x0.dtype)
    den = lambda x, s: 0.9 * x  # noqa: E731
    got = core.ambient_loss(den, x0, 0.0, 0.7, noise)
    want = ((0.9 * (x0 + 0.7 * noise) - x0) ** 2).mean(dim=1)
    torch.testing.assert_close(got, want)


def test_x0_weighting_turns_the_error_into_clean_space_and_is_capped():
    st = torch.tensor([0.6, 1.0, 0.5005])
    sn = torch.tensor([0.3, 0.0, 0.5])
    w = core.ambient_weight(st, sn, "x0", sigma_data=0.5, max_weight=1e4)
    want = core.edm_loss_weight(st, 0.5) * st**4 / (st**2 - sn**2) ** 2
    torch.testing.assert_close(w[:2], want[:2])
    assert w[2].item() == 1e4  # near sigma_t = sigma_n the factor explodes; the cap holds it
    torch.testing.assert_close(core.ambient_weight(st, sn, "none"), torch.ones(3))
    with pytest.raises(ValueError, match="weighting"):
        core.ambient_weight(st, sn, "snr")


def test_add_ambient_noise_matches_the_clean_marginal():
    gmm = single_gaussian(d=1, std=0.5)
    x0 = gmm.sample(100_000, GEN(4))
    y = x0 + 0.8 * torch.randn(x0.shape, generator=GEN(5), dtype=x0.dtype)
    x_t = core.add_ambient_noise(y, 0.8, 1.5, torch.randn(x0.shape, generator=GEN(6), dtype=x0.dtype))
    assert x_t.std().item() == pytest.approx(math.sqrt(0.5**2 + 1.5**2), rel=0.01)


def test_bad_arguments_raise_clear_errors():
    y = torch.zeros(4, 3)
    noise = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"sigma_t must be >= sigma_n.*samples \[2\]"):
        core.add_ambient_noise(y, torch.tensor([0.1, 0.1, 0.5, 0.1]), 0.3, noise)
    with pytest.raises(ValueError, match="noise has shape"):
        core.add_ambient_noise(y, 0.1, 0.3, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="sigma_n must be >= 0"):
        core.add_ambient_noise(y, -0.1, 0.3, noise)
    with pytest.raises(ValueError, match="x0_hat has shape"):
        core.noisy_prediction(y, torch.zeros(3, 3), 0.3, 0.1)
    with pytest.raises(ValueError, match="sigma_t has 2 entries but the batch has 4"):
        core.ambient_loss(lambda x, s: x, y, 0.0, torch.tensor([0.3, 0.4]))


def test_training_sigmas_stay_above_sigma_n_and_follow_the_truncated_lognormal():
    sn = torch.cat([torch.zeros(50_000), torch.full((50_000,), 0.5)])
    s = core.sample_training_sigmas(sn, generator=GEN(7))
    assert (s[50_000:] > 0.5 * (1 + 1e-3) - 1e-7).all()
    log_clean = s[:50_000].log()
    assert log_clean.mean().item() == pytest.approx(-1.2, abs=0.02)
    assert log_clean.std().item() == pytest.approx(1.2, abs=0.02)
    # Truncation keeps the log-normal's shape above the floor: P(s < 1 | s > 0.5) analytically.
    cdf = lambda v: 0.5 * (1 + math.erf((math.log(v) + 1.2) / (1.2 * math.sqrt(2))))  # noqa: E731
    want = (cdf(1.0) - cdf(0.5005)) / (1 - cdf(0.5005))
    assert (s[50_000:] < 1.0).float().mean().item() == pytest.approx(want, abs=0.01)
    capped = core.sample_training_sigmas(sn, sigma_max=2.0, generator=GEN(10))
    assert capped.max() <= 2.0 and (capped[50_000:] > 0.5).all()  # truncated on both sides
    with pytest.raises(ValueError, match="sigma_max"):
        core.sample_training_sigmas(torch.tensor([3.0]), sigma_max=2.0)
    lu = core.sample_training_sigmas(sn, distribution="log_uniform", sigma_max=10.0, generator=GEN(8))
    assert lu.max() <= 10.0 and (lu[50_000:] > 0.5).all()


def test_training_timesteps_are_uniform_above_the_data_level():
    table = core.ve_sigmas(core.sdxl_alphas_cumprod())
    sn = torch.full((40_000,), table[500].item())
    t = core.sample_training_timesteps(sn, table, generator=GEN(9))
    assert (table[t] > sn.double()).all()
    assert t.min().item() == 501 and t.max().item() == 999
    assert t.double().mean().item() == pytest.approx(750, abs=3)
