"""Pure tensor math of ambient diffusion (no Ray, no diffusers): conversions, losses, samplers, corruption."""

from .ambient import (
    Denoiser,
    add_ambient_noise,
    ambient_loss,
    ambient_weight,
    noisy_prediction,
    sample_training_sigmas,
    sample_training_timesteps,
)
from .consistency import ConsistencySettings, consistency_loss
from .conversions import (
    alpha_bar_from_sigma,
    edm_loss_weight,
    edm_scalings,
    eps_from_x0,
    karras_sigmas,
    scale_latents,
    sdxl_alphas_cumprod,
    sigma_from_alpha_bar,
    sigma_to_timestep,
    timestep_to_sigma,
    unscale_latents,
    v_from_x0,
    ve_sigmas,
    ve_to_vp,
    vp_to_ve,
    x0_from_eps,
    x0_from_prediction,
    x0_from_v,
)
from .corruption import corrupt, frozen_noise, raise_noise_level, sample_seed
from .distances import sliced_wasserstein
from .gaussian_mixture import GaussianMixture
from .preconditioning import EDMDenoiser
from .samplers import early_stop_schedule, full_schedule, generate, posterior_step, sample

__all__ = [
    "ConsistencySettings",
    "Denoiser",
    "EDMDenoiser",
    "GaussianMixture",
    "add_ambient_noise",
    "alpha_bar_from_sigma",
    "ambient_loss",
    "ambient_weight",
    "consistency_loss",
    "corrupt",
    "early_stop_schedule",
    "edm_loss_weight",
    "edm_scalings",
    "eps_from_x0",
    "frozen_noise",
    "full_schedule",
    "generate",
    "karras_sigmas",
    "noisy_prediction",
    "posterior_step",
    "raise_noise_level",
    "sample",
    "sample_seed",
    "sample_training_sigmas",
    "sample_training_timesteps",
    "scale_latents",
    "sliced_wasserstein",
    "sdxl_alphas_cumprod",
    "sigma_from_alpha_bar",
    "sigma_to_timestep",
    "timestep_to_sigma",
    "unscale_latents",
    "v_from_x0",
    "ve_sigmas",
    "ve_to_vp",
    "vp_to_ve",
    "x0_from_eps",
    "x0_from_prediction",
    "x0_from_v",
]
