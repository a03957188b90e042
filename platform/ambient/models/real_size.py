"""SDXL's real architecture with random weights: for scale tests and capacity planning only.

Nothing here is a usable model. It has SDXL base 1.0's published structure (the UNet, the 8x KL
autoencoder, a CLIP ViT-L and an OpenCLIP bigG text encoder at their real widths and depths) so that
memory, step times, checkpoint sizes and every batched path can be measured at the real size without
downloading weights. The tokenizers are the project's offline ones (a small byte-level vocabulary);
the encoders keep CLIP's 49,408-row embedding tables so their parameter counts are the published ones.

``build_real_size(device="meta")`` builds every component without memory in seconds (for counting);
``write_real_size_folder`` writes a loadable diffusers folder (float16 weights on disk, about 7 GB).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from . import tiny
from .lora import ATTENTION_PROJECTIONS
from .tiny import build_tokenizer

RESOLUTION = 1024
VAE_FACTOR = 8
CLIP_VOCAB = 49408
CLIP_CONTEXT = 77
ADDITION_TIME_EMBED_DIM = 256
POOLED_DIM = 1280  # text_encoder_2's projection

# Published parameter counts of stabilityai/stable-diffusion-xl-base-1.0's components.
PUBLISHED_PARAMETERS = {
    "unet": 2_567_463_684,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
}

UNET_CONFIG = dict(
    sample_size=RESOLUTION // VAE_FACTOR,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,  # 768 (ViT-L) + 1280 (bigG) penultimate hidden states, concatenated
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
    projection_class_embeddings_input_dim=POOLED_DIM + 6 * ADDITION_TIME_EMBED_DIM,  # 2816
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=RESOLUTION,
    scaling_factor=0.13025,
    force_upcast=True,  # SDXL's VAE overflows in float16
)

TEXT_ENCODERS = {
    # CLIP ViT-L/14's text tower
    "text_encoder": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         hidden_act="quick_gelu", projection_dim=768),
    # OpenCLIP ViT-bigG/14's text tower (with its projection: SDXL's pooled embedding)
    "text_encoder_2": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                           num_attention_heads=20, hidden_act="gelu", projection_dim=POOLED_DIM),
}  # fmt: skip


@dataclass
class RealSizeModel:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection

    def parameter_counts(self) -> dict[str, int]:
        return {
            name: sum(p.numel() for p in getattr(self, name).parameters()) for name in PUBLISHED_PARAMETERS
        }


def _text_config(name: str) -> CLIPTextConfig:
    tokenizer = build_tokenizer()
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB,
        max_position_embeddings=CLIP_CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_ENCODERS[name],
    )


def build_scheduler() -> EulerDiscreteScheduler:
    """SDXL base's own scheduler config: epsilon prediction."""
    return tiny.build_scheduler(prediction_type="epsilon")


def build_real_size(device: str | torch.device = "meta", seed: int = 0) -> RealSizeModel:
    """The four model components at SDXL's size. On ``meta`` nothing is allocated (seconds); on ``cpu``
    the weights are random (seeded; the caller's global generator is spared), about 13 GB in float32."""
    placement = torch.device(device) if str(device) == "meta" else nullcontext()
    with torch.random.fork_rng(devices=[]), placement:
        torch.manual_seed(seed)
        return RealSizeModel(
            unet=UNet2DConditionModel(**UNET_CONFIG),
            vae=AutoencoderKL(**VAE_CONFIG),
            text_encoder=CLIPTextModel(_text_config("text_encoder")),
            text_encoder_2=CLIPTextModelWithProjection(_text_config("text_encoder_2")),
        )


def lora_target_count(unet: UNet2DConditionModel, targets=ATTENTION_PROJECTIONS) -> int:
    """Linear layers that ``add_lora`` adapts (attention projections of every transformer block)."""
    return sum(
        1
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear) and any(name.endswith(f".{t}") for t in targets)
    )


def write_real_size_folder(out: str | Path, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """A diffusers SDXL folder with the real architecture and random weights (``dtype`` on disk).

    Written to a temporary folder beside ``out`` and renamed into place; an existing complete folder
    (with model_index.json) is kept."""
    from ambient.storage import local_folder_atomic

    out = Path(out)
    if (out / "model_index.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with local_folder_atomic(out) as tmp:
        model = build_real_size("cpu", seed)
        pipe = StableDiffusionXLPipeline(
            vae=model.vae,
            text_encoder=model.text_encoder,
            text_encoder_2=model.text_encoder_2,
            tokenizer=build_tokenizer(),
            tokenizer_2=build_tokenizer(),
            unet=model.unet,
            scheduler=build_scheduler(),
            add_watermarker=False,
        )
        pipe.to(dtype=dtype)
        pipe.save_pretrained(tmp, safe_serialization=True)
        del pipe, model
    return out
