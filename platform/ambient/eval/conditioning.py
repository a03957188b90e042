"""A caption-conditioned denoiser (x, sigma) -> x0_hat for a batch of training captions."""

from __future__ import annotations

import torch

from ambient.core import Denoiser
from ambient.models.conditioning import encode_prompts, make_add_time_ids
from ambient.models.denoiser import SDXLDenoiser, guided
from ambient.models.loading import SDXLComponents


@torch.no_grad()
def caption_denoiser(
    comps: SDXLComponents, captions: list[str], height: int, width: int, guidance: float = 1.0
) -> tuple[Denoiser, SDXLDenoiser]:
    """(guided denoiser, the bare VE denoiser). Micro-conditioning as for an uncropped training image of
    the given size; the unconditional branch is the empty caption (what caption dropout trains)."""
    encoders = [comps.text_encoder, comps.text_encoder_2]
    tokenizers = [comps.tokenizer, comps.tokenizer_2]
    device = comps.unet.device
    batch = len(captions)
    embeds, pooled = encode_prompts(tokenizers, encoders, list(captions))
    time_ids = make_add_time_ids(
        torch.tensor([[height, width]] * batch), torch.zeros(batch, 2), (height, width)
    ).to(device)
    cond = {
        "encoder_hidden_states": embeds.to(device),
        "text_embeds": pooled.to(device),
        "time_ids": time_ids,
    }
    base = SDXLDenoiser(comps.unet, comps.alphas_cumprod, comps.scheduler.config.prediction_type)
    if guidance == 1.0:
        return guided(base, cond, cond, 1.0), base
    e, p = encode_prompts(tokenizers, encoders, [""] * batch)
    neg = {"encoder_hidden_states": e.to(device), "text_embeds": p.to(device), "time_ids": time_ids}
    return guided(base, cond, neg, guidance), base
