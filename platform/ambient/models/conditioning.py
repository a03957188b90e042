"""SDXL conditioning: prompt embeddings of the two CLIP encoders, the six add_time_ids, caption dropout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase


@torch.no_grad()
def encode_prompts(
    tokenizers: Sequence[PreTrainedTokenizerBase], text_encoders: Sequence[nn.Module], captions: list[str]
) -> tuple[Tensor, Tensor]:
    """(prompt_embeds (B, 77, D1 + D2), pooled (B, D2)), as StableDiffusionXLPipeline.encode_prompt.

    Each encoder reads its own tokenisation padded to 77; the sequence embedding is the penultimate
    hidden state of each, concatenated; the pooled embedding is the projected one of the last encoder.
    """
    if len(tokenizers) != len(text_encoders):
        raise ValueError(f"got {len(tokenizers)} tokenizers for {len(text_encoders)} text encoders")
    if isinstance(captions, str):
        raise TypeError("captions must be a list of strings, not one string")
    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenizer(
            list(captions),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds first
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    if pooled is None:
        raise ValueError("no text encoder returned a pooled projection (need a CLIPTextModelWithProjection)")
    return torch.cat(hidden, dim=-1), pooled


def make_add_time_ids(
    original_size_hw: Tensor, crop_top_left: Tensor, target_size_hw: tuple[int, int], dtype=torch.float32
) -> Tensor:
    """(B, 6) micro-conditioning in diffusers' order: original (h, w), crop (top, left), target (h, w)."""
    original = torch.as_tensor(original_size_hw).reshape(-1, 2)
    crop = torch.as_tensor(crop_top_left).reshape(-1, 2)
    if original.shape[0] != crop.shape[0]:
        raise ValueError(
            f"original_size_hw has {original.shape[0]} rows but crop_top_left has {crop.shape[0]}"
        )
    target = torch.tensor([list(target_size_hw)], dtype=dtype, device=original.device).expand(
        len(original), 2
    )
    return torch.cat([original.to(dtype), crop.to(original.device, dtype), target], dim=1)


def drop_mask(count: int, probability: float, generator: torch.Generator | None = None) -> Tensor:
    """(count,) bool: which rows lose their caption. One draw per row from ``generator``, whether the
    captions are strings or stored embeddings, so both paths drop the same rows."""
    if not 0 <= probability <= 1:
        raise ValueError(f"caption dropout probability must be in [0, 1], got {probability}")
    return torch.rand(count, generator=generator) < probability


def drop_captions(
    captions: Sequence[str], probability: float, generator: torch.Generator | None = None
) -> list[str]:
    """Replace each caption by "" with ``probability`` (the unconditional branch of CFG)."""
    drop = drop_mask(len(captions), probability, generator)
    return ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]


@dataclass(frozen=True)
class TextEmbeddings:
    """Precomputed text conditioning, one row per caption: what ``encode_prompts`` returns."""

    prompt_embeds: Tensor  # (N, L, D1 + D2)
    pooled: Tensor  # (N, D2)

    def __post_init__(self) -> None:
        if self.prompt_embeds.ndim != 3 or self.pooled.ndim != 2:
            raise ValueError(
                f"text embeddings need prompt_embeds (N, L, D) and pooled (N, D2), got "
                f"{tuple(self.prompt_embeds.shape)} and {tuple(self.pooled.shape)}"
            )
        if len(self.prompt_embeds) != len(self.pooled):
            raise ValueError(f"{len(self.prompt_embeds)} prompt_embeds rows for {len(self.pooled)} pooled")

    def __len__(self) -> int:
        return len(self.prompt_embeds)

    def rows(self, index: slice | Tensor) -> TextEmbeddings:
        return TextEmbeddings(self.prompt_embeds[index], self.pooled[index])

    def repeat_to(self, count: int) -> TextEmbeddings:
        """``count`` rows: a one-row embedding (the empty caption's) repeated, else the rows themselves."""
        if len(self) == count:
            return self
        if len(self) != 1:
            raise ValueError(f"{len(self)} embedding rows for {count} prompts (give one, or one per prompt)")
        return TextEmbeddings(self.prompt_embeds.expand(count, -1, -1), self.pooled.expand(count, -1))

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TextEmbeddings:
        return TextEmbeddings(self.prompt_embeds.to(device, dtype), self.pooled.to(device, dtype))


def drop_embeddings(embeds: TextEmbeddings, drop: Tensor, empty: TextEmbeddings) -> TextEmbeddings:
    """The rows where ``drop`` is set replaced by the one-row ``empty`` (the empty caption's)."""
    empty = empty.to(embeds.prompt_embeds.device, embeds.prompt_embeds.dtype)
    mask = drop.to(embeds.prompt_embeds.device)
    return TextEmbeddings(
        torch.where(mask[:, None, None], empty.prompt_embeds, embeds.prompt_embeds),
        torch.where(mask[:, None], empty.pooled, embeds.pooled),
    )
