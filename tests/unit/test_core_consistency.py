"""The consistency loss vanishes for the exact denoiser and detects one that is wrong below sigma_n."""

import pytest
import torch

from ambient import core


def mixture():
    return core.GaussianMixture.random(2, 4, scale=1.0, std=0.15, seed=1)


def noisy_data(gmm, n, sigma_n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = gmm.sample(n, g)
    return x0 + sigma_n * torch.randn(x0.shape, generator=g, dtype=x0.dtype)


def gaussian():
    return core.GaussianMixture(
        torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0.4], dtype=torch.float64), torch.ones(1)
    )


# For Gaussian data the posterior mean is linear and the k-step posterior chain reproduces
# E[h(x_s) | x_t] exactly; for a mixture the chain is an approximation whose bias shrinks with k.
@pytest.mark.parametrize("anchor", ["data", "above"])
@pytest.mark.parametrize("data,steps,tol", [("gaussian", 4, 0.05), ("mixture", 16, 0.1)])
def test_consistency_is_zero_for_the_exact_denoiser_and_positive_for_a_biased_one(anchor, data, steps, tol):
    gmm, sigma_n = (gaussian() if data == "gaussian" else mixture()), 0.5
    y = noisy_data(gmm, 40_000, sigma_n)
    exact = gmm.posterior_mean

    def wrong_below(x, s):  # right above sigma_n, a blurred posterior below it
        s = torch.as_tensor(s, dtype=x.dtype)
        return gmm.posterior_mean(x, torch.where(s < sigma_n, 2.5 * s, s))

    settings = core.ConsistencySettings(anchor=anchor, steps=steps, fraction=1.0, s_min=0.002)
    exact_loss = core.consistency_loss(
        exact, y, sigma_n, settings, generator=torch.Generator().manual_seed(1)
    )
    biased_loss = core.consistency_loss(
        wrong_below, y, sigma_n, settings, generator=torch.Generator().manual_seed(1)
    )
    assert biased_loss.item() > 1e-3
    assert abs(exact_loss.item()) < tol * biased_loss.item()


def test_consistency_knobs_control_rows_calls_and_gradient_path():
    calls = []

    def den(x, s, tag):
        calls.append((x.shape[0], torch.is_grad_enabled(), tag.shape[0]))
        return x * w

    w = torch.tensor(0.9, requires_grad=True)
    y = torch.randn(16, 3)
    sigma_n = torch.cat([torch.zeros(8), torch.full((8,), 0.4)])  # clean rows are never used
    tag = torch.arange(16)
    settings = core.ConsistencySettings(steps=3, fraction=0.5)
    loss = core.consistency_loss(den, y, sigma_n, settings, cond={"tag": tag}, generator=torch.Generator())
    # 4 of the 8 noisy rows; anchor without grad, 2 chain steps (doubled batch) without grad, one with.
    assert calls == [(4, False, 4), (8, False, 8), (8, False, 8), (8, True, 8)]
    loss.backward()
    assert w.grad is not None

    calls.clear()
    core.consistency_loss(
        den,
        y,
        sigma_n,
        core.ConsistencySettings(steps=1, fraction=1.0, stop_grad_anchor=False),
        cond={"tag": tag},
    )
    assert calls[0] == (8, True, 8)


def test_consistency_settings_validate():
    with pytest.raises(ValueError, match="fraction"):
        core.ConsistencySettings(fraction=0.0)
    with pytest.raises(ValueError, match="weight"):
        core.ConsistencySettings(weight=-1.0)
    with pytest.raises(ValueError, match="steps"):
        core.ConsistencySettings(steps=0)
    s = core.ConsistencySettings(every=3)
    assert [s.active(i) for i in range(4)] == [True, False, False, True]
    assert not core.ConsistencySettings(weight=0.0).active(0)


@pytest.mark.parametrize("anchor", ["data", "above"])
def test_every_batch_runs_the_same_forward_passes_clean_or_noisy(anchor):
    """Ranks of a ZeRO-3 run gather parameters in each forward pass: a batch without a noisy row must
    run as many passes (weighted 0, gradient path kept) as one with noisy rows."""
    w = torch.tensor(0.9, requires_grad=True)
    calls = []

    def den(x, s):
        calls.append((torch.is_grad_enabled(), float(torch.as_tensor(s).min())))
        return x * w

    settings = core.ConsistencySettings(steps=3, fraction=1.0, anchor=anchor)
    y = torch.randn(8, 3)
    noisy = core.consistency_loss(den, y, torch.full((8,), 0.4), settings, generator=torch.Generator())
    noisy_calls = [grad for grad, _ in calls]
    calls.clear()
    clean = core.consistency_loss(den, y, torch.zeros(8), settings, generator=torch.Generator())
    assert [grad for grad, _ in calls] == noisy_calls == [False, False, False, True]
    assert noisy.item() != 0 and clean.item() == 0.0
    clean.backward()
    assert w.grad is not None and w.grad.item() == 0.0
    # Rows at or below the model's smallest level have nothing below them: same passes, weight 0.
    calls.clear()
    low = core.consistency_loss(den, y, torch.full((8,), 0.02), settings, sigma_min=0.029)
    assert len(calls) == 4 and low.item() == 0.0


@pytest.mark.parametrize("s_distribution", ["log_uniform", "near"])
def test_chains_never_go_below_the_models_smallest_level(s_distribution):
    levels = []

    def den(x, s):
        levels.append(torch.as_tensor(s).reshape(-1))
        return x

    sigma_n = torch.tensor([0.0, 0.03, 0.035, 0.05, 0.3, 1.0] * 50)
    settings = core.ConsistencySettings(steps=2, fraction=1.0, s_min=0.002, s_distribution=s_distribution)
    core.consistency_loss(
        den, torch.randn(300, 2), sigma_n, settings, generator=torch.Generator(), sigma_min=0.029
    )
    assert torch.cat(levels).min().item() >= 0.029
