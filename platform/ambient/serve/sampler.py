"""One model call for a batch of images that share their sampling settings.

Mirrors ambient.models.sampling.sample_latents (same schedules, per-image generators, early-stop
Tweedie finish) with one addition the service needs: a negative prompt per image as the guidance's
unconditional branch (sample_latents always uses ""). Everything numerical is ambient.core's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image

from ambient.core import early_stop_schedule, full_schedule, sample
from ambient.models.conditioning import encode_prompts, make_add_time_ids
from ambient.models.denoiser import SDXLDenoiser, guided
from ambient.models.loading import SDXLComponents
from ambient.models.sampling import _posterior_sample
from ambient.models.vae import decode_latents, tensor_to_pil


@dataclass(frozen=True)
class SamplingKey:
    """Settings that must be equal for images to share one model call."""

    steps: int
    guidance_scale: float
    height: int
    width: int
    mode: Literal["full", "early_stop"]
    sigma_n: float
    method: Literal["euler", "heun", "posterior"]

    @property
    def sigma_stop(self) -> float:
        return self.sigma_n if self.mode == "early_stop" and self.sigma_n > 0 else 0.0


@torch.no_grad()
def generate(
    components: SDXLComponents,
    key: SamplingKey,
    prompts: list[str],
    negative_prompts: list[str],
    seeds: list[int],
    pad_to: int | None = None,
) -> list[Image.Image]:
    """One image per (prompt, negative prompt, seed); image i depends on its own seed only.

    CPU (and GPU) kernels pick their blocking by batch size, so the same row computed in batches of
    different sizes can differ in the last float bits, and after 8-bit rounding a pixel can move by
    one level. With ``pad_to`` every call runs at exactly that many rows (filler rows are dropped), so
    an image is bitwise the same whatever batch it lands in, at the price of computing the filler.
    """
    if not len(prompts) == len(negative_prompts) == len(seeds):
        raise ValueError("prompts, negative_prompts and seeds must have the same length")
    count = len(prompts)
    if pad_to is not None and count < pad_to:
        filler = pad_to - count
        prompts, negative_prompts, seeds = (
            [*prompts, *[""] * filler],
            [*negative_prompts, *[""] * filler],
            [*seeds, *[0] * filler],
        )
    f = components.vae_scale_factor
    if key.height % f or key.width % f:
        raise ValueError(f"height and width must be multiples of {f}")
    unet = components.unet
    device = unet.device
    batch = len(prompts)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    encoders = (
        [components.tokenizer, components.tokenizer_2],
        [components.text_encoder, components.text_encoder_2],
    )
    # One text-encoder pass for both branches.
    embeds, pooled = encode_prompts(*encoders, list(prompts) + list(negative_prompts))
    size = torch.tensor([[key.height, key.width]] * batch)
    time_ids = make_add_time_ids(size, torch.zeros(batch, 2), (key.height, key.width)).to(device)
    cond = {"encoder_hidden_states": embeds[:batch].to(device), "text_embeds": pooled[:batch].to(device)}
    neg = {"encoder_hidden_states": embeds[batch:].to(device), "text_embeds": pooled[batch:].to(device)}
    cond["time_ids"] = neg["time_ids"] = time_ids

    base = SDXLDenoiser(unet, components.alphas_cumprod, components.scheduler.config.prediction_type)
    denoiser = guided(base, cond, neg, key.guidance_scale)
    sigma_max = base.sigma_max
    early = key.sigma_stop > 0
    if early:
        if key.sigma_n >= sigma_max:
            raise ValueError(f"sigma_n {key.sigma_n} is not below the model's largest sigma {sigma_max:.4g}")
        sigmas = early_stop_schedule(key.steps, key.sigma_n, sigma_max)
    else:
        sigmas = full_schedule(key.steps, base.sigma_min, sigma_max)

    shape = (unet.config.in_channels, key.height // f, key.width // f)
    x = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device) * sigma_max
    if key.method == "posterior":
        x = _posterior_sample(denoiser, x, sigmas, gens)
    else:
        x = sample(denoiser, x, sigmas, method=key.method)
    if early:  # one Tweedie step from sigma_n: the model is not trusted below the data's noise
        x = denoiser(x, torch.full((batch,), float(key.sigma_n), device=device))
    return tensor_to_pil(decode_latents(components.vae, x))[:count]
