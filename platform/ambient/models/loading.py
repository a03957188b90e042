"""Load an SDXL diffusers folder from a local path: safetensors only (nothing is ever unpickled).

What a folder must hold, and which folder a published export loads from, is ``ambient.models.folders``
(``resolve_export``); the loaders here apply it, and fold a LoRA adapter export into its base.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ambient.storage import StorageConfig

from .conditioning import encode_prompts
from .folders import (
    LORA_DIR,
    MODEL_COMPONENTS,
    adapter_base,
    check_model_dir,
    resolve_export,
)
from .lora import load_lora
from .source import resolve_model


@dataclass
class TextEncoders:
    """SDXL's two tokenizers and frozen CLIP text encoders: captions -> (prompt_embeds, pooled)."""

    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_prompts(
            [self.tokenizer, self.tokenizer_2], [self.text_encoder, self.text_encoder_2], captions
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEncoders:
        for encoder in (self.text_encoder, self.text_encoder_2):
            encoder.requires_grad_(False).eval().to(device=device, dtype=dtype)
        return self


@dataclass
class SDXLComponents:
    """The parts of an SDXL pipeline, loaded one by one (training workers need no pipeline object).
    The text encoders and tokenizers are None where a run trains on precomputed text embeddings."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel | None
    text_encoder_2: CLIPTextModelWithProjection | None
    tokenizer: CLIPTokenizer | None
    tokenizer_2: CLIPTokenizer | None
    scheduler: EulerDiscreteScheduler

    @property
    def text_encoders(self) -> TextEncoders:
        """The text half, for encoding captions; an error names what to do when it was not loaded."""
        if self.text_encoder is None or self.text_encoder_2 is None:
            raise ValueError(
                "no text encoders loaded (components loaded with text_encoders=False): pass precomputed "
                "text embeddings instead of captions"
            )
        return TextEncoders(self.tokenizer, self.tokenizer_2, self.text_encoder, self.text_encoder_2)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> SDXLComponents:
        for name in MODEL_COMPONENTS:
            module = getattr(self, name)
            if module is not None:
                module.to(device=device, dtype=dtype)
        return self

    @classmethod
    def from_pipeline(cls, pipe: StableDiffusionXLPipeline) -> SDXLComponents:
        return cls(**{f.name: getattr(pipe, f.name) for f in fields(cls)})


def _local_base(adapter_dir: Path, base: str) -> Path:
    """The adapter's base model as a local folder (an s3:// base is fetched into the cache)."""
    try:
        return resolve_model(base)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"LoRA adapter export {adapter_dir}: its base model {base}: {err}") from None


def load_pipeline(path: str | Path, dtype: torch.dtype = torch.float32) -> StableDiffusionXLPipeline:
    """StableDiffusionXLPipeline from a local diffusers folder (local paths only; S3 is fetched elsewhere).
    A LoRA adapter export loads as its base with the adapter folded in."""
    root = check_model_dir(path)
    base = adapter_base(root)
    pipe = StableDiffusionXLPipeline.from_pretrained(
        _local_base(root, base) if base else root, dtype=dtype, use_safetensors=True, local_files_only=True
    )
    if base:
        load_lora(pipe.unet, root / LORA_DIR)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_text_encoders(path: str | Path, dtype: torch.dtype = torch.float32) -> TextEncoders:
    """The tokenizers and text encoders of a local diffusers folder, or of the folder holding only
    those four subfolders (what encode.py stages from S3); an adapter export's are its base's."""
    root = resolve_export(path) if Path(path).is_dir() else Path(path)
    base = adapter_base(root) if root.is_dir() else None
    if base is not None:
        root = _local_base(root, base)
    weights = {"dtype": dtype, "use_safetensors": True, "local_files_only": True}
    return TextEncoders(
        tokenizer=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True),
        tokenizer_2=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer_2", local_files_only=True),
        text_encoder=CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **weights),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
            root, subfolder="text_encoder_2", **weights
        ),
    )


def load_components(
    path: str | Path, dtype: torch.dtype = torch.float32, *, text_encoders: bool = True
) -> SDXLComponents:
    """The seven SDXL components of a local diffusers folder, each loaded on its own. A LoRA adapter
    export loads as its base with the adapter folded into the UNet. ``text_encoders=False`` leaves the
    text encoders and tokenizers None (a run on precomputed text embeddings never needs them)."""
    root = check_model_dir(path)
    base = adapter_base(root)
    if base is not None:
        comps = load_components(_local_base(root, base), dtype, text_encoders=text_encoders)
        load_lora(comps.unet, root / LORA_DIR)
        return comps
    weights = {"dtype": dtype, "use_safetensors": True, "local_files_only": True}
    text = load_text_encoders(root, dtype) if text_encoders else None
    return SDXLComponents(
        unet=UNet2DConditionModel.from_pretrained(root, subfolder="unet", **weights),
        vae=AutoencoderKL.from_pretrained(root, subfolder="vae", **weights),
        text_encoder=text.text_encoder if text else None,
        text_encoder_2=text.text_encoder_2 if text else None,
        tokenizer=text.tokenizer if text else None,
        tokenizer_2=text.tokenizer_2 if text else None,
        # Only alphas_cumprod is read from the scheduler (the samplers are ambient.core's), so any
        # DDPM-family scheduler config loads as Euler.
        scheduler=EulerDiscreteScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True),
    )


def load_model_components(
    ref: str | None, storage: StorageConfig | None = None, *, text_encoders: bool = True
) -> tuple[SDXLComponents, Path]:
    """The components of the model at ``ref`` (local, ``s3://``, or the default when None), without text
    encoders and tokenizers when ``text_encoders`` is False; and the local folder they came from.
    ``ModelRef.components`` is the same for a reference held as a ``ModelRef``."""
    folder = resolve_model(ref, storage)
    return load_components(folder, text_encoders=text_encoders), folder
