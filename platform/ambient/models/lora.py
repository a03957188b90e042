"""LoRA on the UNet through PEFT (the diffusers training scripts' recipe)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from torch import Tensor

from .folders import LORA_WEIGHTS

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def add_lora(
    unet: UNet2DConditionModel,
    rank: int = 4,
    alpha: float | None = None,
    target_modules: Sequence[str] = ATTENTION_PROJECTIONS,
) -> UNet2DConditionModel:
    """Freeze ``unet`` and attach LoRA adapters of ``rank`` to ``target_modules``; returns the same UNet.

    ``alpha`` defaults to ``rank`` (scale 1), as in the diffusers SDXL LoRA script. Gaussian init
    of A with B = 0 leaves the model's output unchanged until training moves B.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        init_lora_weights="gaussian",
        target_modules=list(target_modules),
    )
    unet.add_adapter(config)
    return unet


def has_lora(unet: UNet2DConditionModel) -> bool:
    return bool(getattr(unet, "peft_config", None))


def lora_state_dict(unet: UNet2DConditionModel) -> dict[str, Tensor]:
    """The adapter weights in diffusers' key format (what save_lora_weights / load_lora_weights expect)."""
    if not has_lora(unet):
        raise ValueError("this UNet carries no LoRA adapter (call add_lora first)")
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def merge_lora(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Fold the adapters into the base weights and remove the PEFT layers (in place): a plain UNet."""
    if not has_lora(unet):
        raise ValueError("this UNet carries no LoRA adapter to merge")
    unet.fuse_lora(lora_scale=1.0)
    unet.unload_lora()  # keeps the fused weights, drops the adapter modules
    return unet


def lora_config(unet: UNet2DConditionModel) -> dict[str, Any]:
    """The adapter's PEFT config as JSON-able data (rank, alpha, targets). Saved beside the weights:
    without it a loader assumes alpha = rank and rescales an adapter trained with another alpha."""
    if not has_lora(unet):
        raise ValueError("this UNet carries no LoRA adapter (call add_lora first)")
    config = next(iter(unet.peft_config.values())).to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}


def save_lora(folder: str | Path, state: dict[str, Tensor], config: dict[str, Any]) -> Path:
    """``folder/pytorch_lora_weights.safetensors``: diffusers-format weights with the adapter's config
    (so ``load_lora_weights`` restores its alpha)."""
    StableDiffusionXLPipeline.save_lora_weights(
        folder, unet_lora_layers=state, unet_lora_adapter_metadata=config, safe_serialization=True
    )
    return Path(folder) / LORA_WEIGHTS


def load_lora(unet: UNet2DConditionModel, folder: str | Path) -> UNet2DConditionModel:
    """Attach the adapter saved in ``folder`` (by ``save_lora`` or diffusers) to ``unet`` and fold it in
    (in place): a plain UNet that computes base + adapter."""
    weights = Path(folder) / LORA_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no {LORA_WEIGHTS}")
    unet.load_lora_adapter(
        str(folder), prefix="unet", weight_name=LORA_WEIGHTS, use_safetensors=True, local_files_only=True
    )
    return merge_lora(unet)
