"""Round trips of every conversion, and agreement with diffusers' SDXL schedule."""

import pytest
import torch

from ambient import core

SIGMAS = torch.tensor([0.01, 0.3, 1.0, 5.0, 14.6])


def _x(seed=0, shape=(5, 4, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_ve_sigmas_match_diffusers_euler_scheduler_for_sdxl():
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    ours = core.ve_sigmas(sched.alphas_cumprod)
    # diffusers stores the training sigmas reversed (largest first) in float32.
    theirs = ((1 - sched.alphas_cumprod) / sched.alphas_cumprod) ** 0.5
    torch.testing.assert_close(ours.float(), theirs.float())
    sched.set_timesteps(1000)
    torch.testing.assert_close(ours.flip(0).float(), sched.sigmas[:-1].float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(core.sdxl_alphas_cumprod(), sched.alphas_cumprod.double(), rtol=1e-6, atol=0)
    # The paper's figures: t_n = 100, 500, 800 give sigma_VE of about 0.34, 1.62, 5.11.
    assert [round(ours[t].item(), 2) for t in (100, 500, 800)] == pytest.approx([0.34, 1.62, 5.11], abs=0.02)


def test_sigma_timestep_round_trip_and_table_points():
    table = core.ve_sigmas(core.sdxl_alphas_cumprod())
    t = torch.tensor([0.0, 1.0, 17.5, 500.0, 998.25, 999.0], dtype=torch.float64)
    s = core.timestep_to_sigma(t, table)
    torch.testing.assert_close(core.sigma_to_timestep(s, table), t, rtol=0, atol=1e-6)
    torch.testing.assert_close(core.timestep_to_sigma(torch.tensor(250), table), table[250])
    with pytest.raises(ValueError, match="timestep must lie"):
        core.timestep_to_sigma(1000.5, table)


def test_vp_ve_round_trip_and_alpha_bar():
    x = _x()
    s = SIGMAS
    torch.testing.assert_close(core.ve_to_vp(core.vp_to_ve(x, s), s), x)
    ab = core.alpha_bar_from_sigma(s.double())
    torch.testing.assert_close(core.sigma_from_alpha_bar(ab), s.double())
    # The VE point is the VP point divided by sqrt(abar).
    torch.testing.assert_close(core.vp_to_ve(x, s), x / ab.sqrt().reshape(-1, 1, 1, 1))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_prediction_round_trips(kind):
    x0, eps = _x(1), _x(2)
    s = SIGMAS.double().reshape(-1, 1, 1, 1)
    x = x0 + s * eps
    if kind == "epsilon":
        pred = core.eps_from_x0(x, x0, SIGMAS)
        torch.testing.assert_close(pred, eps)
    else:
        pred = core.v_from_x0(x, x0, SIGMAS)
        ab = 1 / (1 + s**2)
        torch.testing.assert_close(pred, ab.sqrt() * eps - (1 - ab).sqrt() * x0)  # diffusers' definition
    torch.testing.assert_close(core.x0_from_prediction(x, pred, SIGMAS, kind), x0)
    torch.testing.assert_close(core.x0_from_prediction(x, x0, SIGMAS, "sample"), x0)
    with pytest.raises(ValueError, match="prediction_type"):
        core.x0_from_prediction(x, pred, SIGMAS, "score")


def test_latent_scaling_round_trip():
    z = _x(3)
    scaled = core.scale_latents(z, 0.13025)
    torch.testing.assert_close(core.unscale_latents(scaled, 0.13025), z)
    torch.testing.assert_close(core.unscale_latents(core.scale_latents(z, 0.36, 0.06), 0.36, 0.06), z)
    torch.testing.assert_close(scaled, z * 0.13025)


def test_edm_scalings_identities():
    s = torch.tensor([0.002, 0.1, 0.5, 3.0, 80.0], dtype=torch.float64)
    c = core.edm_scalings(s, sigma_data=0.5)
    # c_skip^2 s_data^2 + c_out^2 ... : the effective training target has unit variance,
    # and c_skip + c_out^2 / sigma_data^2 == 1 (EDM appendix B.6).
    torch.testing.assert_close(c.c_skip + c.c_out**2 / 0.25, torch.ones_like(s))
    torch.testing.assert_close(c.c_in, 1 / (s**2 + 0.25).sqrt())
    torch.testing.assert_close(c.c_noise, s.log() / 4)
    torch.testing.assert_close(core.edm_loss_weight(s, 0.5), 1 / c.c_out**2)


def test_karras_schedule_endpoints_and_per_sample():
    s = core.karras_sigmas(10, 0.002, 80.0)
    assert s[0].item() == pytest.approx(80.0) and s[-1].item() == pytest.approx(0.002)
    assert (s[1:] < s[:-1]).all()
    per = core.karras_sigmas(6, torch.tensor([0.2, 0.5, 1.0]), 80.0)
    assert per.shape == (6, 3)
    torch.testing.assert_close(per[-1], torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma_min"):
        core.karras_sigmas(4, 0.0, 1.0)


def test_bad_sigma_arguments_name_the_problem():
    x = _x()
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        core.vp_to_ve(x, -0.1)
    with pytest.raises(ValueError, match="3 entries but the batch has 5"):
        core.vp_to_ve(x, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="finite"):
        core.x0_from_eps(x, x, float("nan"))
    with pytest.raises(ValueError, match="undefined at sigma = 0"):
        core.eps_from_x0(x, x, 0.0)
