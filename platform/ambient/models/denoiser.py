"""The model boundary: SDXL's VP epsilon-UNet seen as a VE clean-sample denoiser h(x_ve, sigma).

ambient.core does all of its math in VE form (x = x0 + sigma eps); this is the only place that knows
SDXL is VP. A call converts x_ve -> x_vp, sigma -> continuous timestep, runs the UNet, and turns its
output back into x0_hat.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core import Denoiser, sigma_to_timestep, ve_sigmas, ve_to_vp, x0_from_prediction


class SDXLDenoiser:
    """Callable ``(x_ve, sigma[B], encoder_hidden_states=, text_embeds=, time_ids=) -> x0_hat``.

    A plain callable rather than an nn.Module so that wrapping the UNet registers no parameters twice
    (the trainer owns the UNet, its optimizer and its DeepSpeed engine; ``unet`` may be that engine).
    The conversions run in float32 whatever the UNet's dtype; x0_hat comes back in x's dtype.
    """

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor, prediction_type: str = "epsilon") -> None:
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}"
            )
        self.unet = unet
        self.prediction_type = prediction_type
        self.train_sigmas = ve_sigmas(alphas_cumprod)  # float64, increasing in t

    @property
    def sigma_min(self) -> float:
        return float(self.train_sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.train_sigmas[-1])

    def model_sigma(self, sigma: Tensor) -> Tensor:
        """The level the UNet is run at: sigma within the schedule's [sigma_min, sigma_max]. The UNet has
        no timestep outside it, so the VP input, the timestep and the x0 conversion all use this one
        clamped value (a timestep clamped while x0 used the true sigma would mix two levels)."""
        return sigma.clamp(min=self.sigma_min, max=self.sigma_max)

    def timesteps(self, sigma: Tensor) -> Tensor:
        """The continuous UNet timestep of each sigma (exact table index for a table sigma)."""
        return sigma_to_timestep(sigma, self.train_sigmas).float()

    def __call__(
        self,
        x: Tensor,
        sigma: Tensor | float,
        *,
        encoder_hidden_states: Tensor,
        text_embeds: Tensor,
        time_ids: Tensor,
    ) -> Tensor:
        sigma = self.model_sigma(torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1))
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        x32 = x.float()
        dtype = _dtype_of(self.unet)
        out = self.unet(
            ve_to_vp(x32, sigma).to(dtype),
            self.timesteps(sigma),
            encoder_hidden_states=encoder_hidden_states.to(dtype),
            added_cond_kwargs={"text_embeds": text_embeds.to(dtype), "time_ids": time_ids.to(dtype)},
            return_dict=False,
        )[0]
        return x0_from_prediction(x32, out.float(), sigma, self.prediction_type).to(x.dtype)


def _dtype_of(module: nn.Module) -> torch.dtype:
    dtype = getattr(module, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(module.parameters()).dtype


def guided(
    denoiser: Denoiser, cond: dict[str, Tensor], uncond: dict[str, Tensor], guidance_scale: float
) -> Denoiser:
    """Classifier-free guidance as a Denoiser ``(x, sigma) -> x0_hat``.

    x0_uncond + w (x0_cond - x0_uncond); x0 is affine in the network output at fixed (x, sigma), so this
    equals diffusers' guidance on epsilon (or v). The two branches go through one batched call; with
    w == 1 the unconditional branch is skipped.
    """
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond need the same keys, got {sorted(cond)} and {sorted(uncond)}")

    if guidance_scale == 1.0:
        return lambda x, sigma: denoiser(x, sigma, **cond)

    both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}

    def guided_denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        x0_uncond, x0_cond = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **both).chunk(2)
        return x0_uncond + guidance_scale * (x0_cond - x0_uncond)

    return guided_denoiser
