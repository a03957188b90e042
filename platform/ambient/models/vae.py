"""The VAE boundary: pixels in [-1, 1] <-> latents in the diffusion model's (scaled) space."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from torch import Tensor

from ..core import scale_latents, unscale_latents


def _factors(vae: AutoencoderKL) -> tuple[float, float | None]:
    return float(vae.config.scaling_factor), getattr(vae.config, "shift_factor", None)


def _work_dtype(vae: AutoencoderKL) -> torch.dtype:
    """SDXL's VAE overflows in float16; its config asks for float32 (force_upcast), which diffusers
    grants by upcasting the VAE in place. So do we, once."""
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)
    return vae.dtype


@torch.no_grad()
def encode_images(vae: AutoencoderKL, pixels: Tensor) -> Tensor:
    """(B, 3, H, W) pixels in [-1, 1] -> (B, C, H/f, W/f) float32 latents in diffusion space.

    Uses the mean of the latent distribution (not a sample) so that encoding is deterministic: the
    only noise in a training latent is then the frozen data noise the ambient method accounts for.
    """
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be (B, 3, H, W), got shape {tuple(pixels.shape)}")
    dtype = _work_dtype(vae)
    mean = vae.encode(pixels.to(vae.device, dtype)).latent_dist.mean
    return scale_latents(mean.float(), *_factors(vae))


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, latents: Tensor) -> Tensor:
    """Diffusion-space latents -> (B, 3, H, W) uint8 images (rounded as diffusers' image processor does)."""
    dtype = _work_dtype(vae)
    raw = unscale_latents(latents.float(), *_factors(vae))
    image = vae.decode(raw.to(vae.device, dtype)).sample.float()
    return ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def pil_to_tensor(images: Sequence[Image.Image]) -> Tensor:
    """RGB PIL images of one size -> (B, 3, H, W) float32 in [-1, 1]."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"images must share one size, got {sorted({a.shape[:2] for a in arrays})}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1


def tensor_to_pil(images: Tensor) -> list[Image.Image]:
    """(B, 3, H, W) uint8 -> RGB PIL images."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    return [Image.fromarray(a) for a in images.permute(0, 2, 3, 1).cpu().numpy()]
