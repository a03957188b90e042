"""One training batch -> the model's inputs: VE latents, per-row sigma_n, and SDXL conditioning.

The text conditioning comes from the live text encoders (the batch's captions), or, for a dataset
prepared with ``encode.text_embeddings``, from the embeddings its rows carry; caption dropout then puts
the dataset's empty-caption embedding in place of a dropped row's, drawing the same rows either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ambient.core import raise_noise_level
from ambient.data.schema import POOLED_EMBEDS, PROMPT_EMBEDS
from ambient.models.conditioning import (
    TextEmbeddings,
    drop_captions,
    drop_embeddings,
    drop_mask,
    make_add_time_ids,
)
from ambient.models.loading import SDXLComponents


@dataclass
class ModelInputs:
    y: Tensor  # noisy latents (B, C, h, w), VE form
    sigma_n: Tensor  # (B,) the level each row is trained at
    cond: dict[str, Tensor]  # encoder_hidden_states, text_embeds, time_ids


def stored_embeddings(batch: dict) -> TextEmbeddings | None:
    """The text embeddings a batch's rows carry (float32), or None when its dataset has none."""
    if PROMPT_EMBEDS not in batch:
        return None
    return TextEmbeddings(batch[PROMPT_EMBEDS].float(), batch[POOLED_EMBEDS].float())


def condition_on(
    text: TextEmbeddings, original_size_hw: Tensor, crop_top_left: Tensor, target_hw: tuple[int, int]
) -> dict[str, Tensor]:
    """SDXL's UNet conditioning from prompt embeddings and the rows' add_time_ids."""
    time_ids = make_add_time_ids(original_size_hw, crop_top_left, target_hw)
    return {
        "encoder_hidden_states": text.prompt_embeds,
        "text_embeds": text.pooled,
        "time_ids": time_ids.to(text.prompt_embeds),
    }


@torch.no_grad()
def conditioning(
    comps: SDXLComponents,
    captions: list[str],
    original_size_hw: Tensor,
    crop_top_left: Tensor,
    target_hw: tuple[int, int],
) -> dict[str, Tensor]:
    """Prompt embeddings from both frozen text encoders and SDXL's add_time_ids, as the pipeline builds them."""
    prompt_embeds, pooled = comps.text_encoders(captions)
    return condition_on(TextEmbeddings(prompt_embeds, pooled), original_size_hw, crop_top_left, target_hw)


def _text(
    batch: dict,
    comps: SDXLComponents,
    caption_dropout: float,
    generator: torch.Generator,
    empty_caption: TextEmbeddings | None,
) -> TextEmbeddings:
    """The rows' text conditioning after caption dropout, stored or live."""
    stored = stored_embeddings(batch)
    if stored is None:
        captions = drop_captions(batch["captions"], caption_dropout, generator)
        with torch.no_grad():
            return TextEmbeddings(*comps.text_encoders(captions))
    if empty_caption is None:
        raise ValueError("a batch with stored text embeddings needs its dataset's empty-caption embedding")
    return drop_embeddings(stored, drop_mask(len(stored), caption_dropout, generator), empty_caption)


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
    empty_caption: TextEmbeddings | None = None,
) -> ModelInputs:
    """``empty_caption``: the dataset's one-row empty-caption embedding, needed when the batch carries
    stored text embeddings (dropped rows get it)."""
    y = batch["latent"].to(device)
    sigma_n = batch["sigma_n"].to(device)
    if ignore_data_noise:  # the naive baseline: noisy rows trained as if they were clean
        sigma_n = torch.zeros_like(sigma_n)
    if sigma_train is not None:
        # Training above the data's level: frozen extra noise from (row id, seed), never redrawn per epoch.
        y, sigma_n = raise_noise_level(y, sigma_n, sigma_train, batch["ids"], noise_seed)
    text = _text(batch, comps, caption_dropout, generator, empty_caption)
    target_hw = (y.shape[-2] * vae_scale_factor, y.shape[-1] * vae_scale_factor)
    cond = condition_on(text, batch["original_size_hw"], batch["crop_top_left"], target_hw)
    return ModelInputs(y=y, sigma_n=sigma_n, cond={k: v.to(device) for k, v in cond.items()})
