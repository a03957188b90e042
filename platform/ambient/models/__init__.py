"""SDXL models: loading and building, conditioning, the VE denoiser boundary, LoRA, sampling, export."""

from .base_model import ensure_default_model
from .conditioning import drop_captions, encode_prompts, make_add_time_ids
from .denoiser import SDXLDenoiser, guided
from .export import export_pipeline, read_metadata
from .folders import check_model_dir
from .loading import SDXLComponents, load_components, load_pipeline
from .lora import add_lora, has_lora, lora_state_dict, merge_lora
from .sampling import image_grid, sample_images, sample_latents
from .tiny import build_tiny_pipeline, parameter_counts
from .vae import decode_latents, encode_images, pil_to_tensor, tensor_to_pil
from .vae_pretrain import ensure_untrained_model

__all__ = [
    "SDXLComponents",
    "SDXLDenoiser",
    "add_lora",
    "build_tiny_pipeline",
    "check_model_dir",
    "decode_latents",
    "drop_captions",
    "encode_images",
    "encode_prompts",
    "ensure_default_model",
    "ensure_untrained_model",
    "export_pipeline",
    "guided",
    "has_lora",
    "image_grid",
    "load_components",
    "load_pipeline",
    "lora_state_dict",
    "make_add_time_ids",
    "merge_lora",
    "parameter_counts",
    "pil_to_tensor",
    "read_metadata",
    "sample_images",
    "sample_latents",
    "tensor_to_pil",
]
