"""Load an SDXL diffusers folder from a local path: safetensors only (nothing is ever unpickled)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

MODEL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
COMPONENTS = (*MODEL_COMPONENTS, "tokenizer", "tokenizer_2", "scheduler")


@dataclass
class SDXLComponents:
    """The parts of an SDXL pipeline, loaded one by one (training workers need no pipeline object)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    scheduler: EulerDiscreteScheduler

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
            getattr(self, name).to(device=device, dtype=dtype)
        return self

    @classmethod
    def from_pipeline(cls, pipe: StableDiffusionXLPipeline) -> SDXLComponents:
        return cls(**{f.name: getattr(pipe, f.name) for f in fields(cls)})


def check_model_dir(path: str | Path) -> Path:
    """Validate a local SDXL diffusers folder; errors name the path and what is missing."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"model folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"model path {root} is not a folder (expected a diffusers folder)")
    index = root / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{root} is not a diffusers folder: {index.name} is missing")
    try:
        listed = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{index} is not valid JSON: {e}") from e
    missing = [c for c in COMPONENTS if c not in listed or listed[c] is None or listed[c][0] is None]
    if missing:
        raise ValueError(f"{index} lists no {', '.join(missing)}: not an SDXL text-to-image folder")
    for name in COMPONENTS:
        if not (root / name).is_dir():
            raise FileNotFoundError(f"{root} lacks the {name}/ folder listed in model_index.json")
    for name in MODEL_COMPONENTS:
        folder = root / name
        if not any(folder.glob("*.safetensors")):
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".ckpt", ".pth"))
            hint = f" (found {', '.join(pickles)}: pickled weights are refused)" if pickles else ""
            raise FileNotFoundError(f"{folder} has no .safetensors weights{hint}")
    return root


def load_pipeline(path: str | Path, dtype: torch.dtype = torch.float32) -> StableDiffusionXLPipeline:
    """StableDiffusionXLPipeline from a local diffusers folder (local paths only; S3 is fetched elsewhere)."""
    root = check_model_dir(path)
    pipe = StableDiffusionXLPipeline.from_pretrained(
        root, dtype=dtype, use_safetensors=True, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_components(path: str | Path, dtype: torch.dtype = torch.float32) -> SDXLComponents:
    """The seven SDXL components of a local diffusers folder, each loaded on its own."""
    root = check_model_dir(path)
    weights = {"dtype": dtype, "use_safetensors": True, "local_files_only": True}
    return SDXLComponents(
        unet=UNet2DConditionModel.from_pretrained(root, subfolder="unet", **weights),
        vae=AutoencoderKL.from_pretrained(root, subfolder="vae", **weights),
        text_encoder=CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **weights),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
            root, subfolder="text_encoder_2", **weights
        ),
        tokenizer=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True),
        tokenizer_2=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer_2", local_files_only=True),
        # Only alphas_cumprod is read from the scheduler (the samplers are ambient.core's), so any
        # DDPM-family scheduler config loads as Euler.
        scheduler=EulerDiscreteScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True),
    )
