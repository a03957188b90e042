"""One training batch -> the model's inputs: VE latents, per-row sigma_n, and SDXL conditioning."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ambient.core import raise_noise_level
from ambient.models.conditioning import drop_captions, encode_prompts, make_add_time_ids
from ambient.models.loading import SDXLComponents


@dataclass
class ModelInputs:
    y: Tensor  # noisy latents (B, C, h, w), VE form
    sigma_n: Tensor  # (B,) the level each row is trained at
    cond: dict[str, Tensor]  # encoder_hidden_states, text_embeds, time_ids


@torch.no_grad()
def conditioning(
    comps: SDXLComponents,
    captions: list[str],
    original_size_hw: Tensor,
    crop_top_left: Tensor,
    target_hw: tuple[int, int],
) -> dict[str, Tensor]:
    """Prompt embeddings from both frozen text encoders and SDXL's add_time_ids, as the pipeline builds them."""
    prompt_embeds, pooled = encode_prompts(
        [comps.tokenizer, comps.tokenizer_2], [comps.text_encoder, comps.text_encoder_2], captions
    )
    time_ids = make_add_time_ids(original_size_hw, crop_top_left, target_hw)
    return {
        "encoder_hidden_states": prompt_embeds,
        "text_embeds": pooled,
        "time_ids": time_ids.to(prompt_embeds),
    }


def model_inputs(
    batch: dict,
    comps: SDXLComponents,
    *,
    caption_dropout: float,
    sigma_train: float | None,
    noise_seed: int,
    vae_scale_factor: int,
    ignore_data_noise: bool = False,
    generator: torch.Generator,
    device: torch.device,
) -> ModelInputs:
    y = batch["latent"].to(device)
    sigma_n = batch["sigma_n"].to(device)
    if ignore_data_noise:  # the naive baseline: noisy rows trained as if they were clean
        sigma_n = torch.zeros_like(sigma_n)
    if sigma_train is not None:
        # Training above the data's level: frozen extra noise from (row id, seed), never redrawn per epoch.
        y, sigma_n = raise_noise_level(y, sigma_n, sigma_train, batch["ids"], noise_seed)
    captions = drop_captions(batch["captions"], caption_dropout, generator)
    target_hw = (y.shape[-2] * vae_scale_factor, y.shape[-1] * vae_scale_factor)
    cond = conditioning(comps, captions, batch["original_size_hw"], batch["crop_top_left"], target_hw)
    return ModelInputs(y=y, sigma_n=sigma_n, cond={k: v.to(device) for k, v in cond.items()})
