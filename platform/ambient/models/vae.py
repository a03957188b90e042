"""The VAE boundary: pixels in [-1, 1] <-> latents in the diffusion model's (scaled) space."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from torch import Tensor

from ..core import scale_latents, unscale_latents

TILE_FROM_PX = 1024  # image side from which decoding runs in tiles
TILE_PX = 512  # the tile side (SDXL's VAE config would otherwise tile only above 1024 px)


def _factors(vae: AutoencoderKL) -> tuple[float, float | None]:
    return float(vae.config.scaling_factor), getattr(vae.config, "shift_factor", None)


def _work_dtype(vae: AutoencoderKL) -> torch.dtype:
    """SDXL's VAE overflows in float16; its config asks for float32 (force_upcast), which diffusers
    grants by upcasting the VAE in place. So do we, once."""
    target = vae_dtype(vae, vae.dtype)
    if vae.dtype != target:
        vae.to(target)
    return vae.dtype


def vae_dtype(vae: AutoencoderKL, dtype: torch.dtype) -> torch.dtype:
    """The dtype to keep a VAE in when the rest of the model runs in ``dtype``: float32 where float16
    would overflow (a config with force_upcast, as SDXL's)."""
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        return torch.float32
    return dtype


def _chunks(x: Tensor, micro_batch: int | None) -> tuple[Tensor, ...]:
    if micro_batch is None:
        return (x,)
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    return x.split(micro_batch)


@torch.no_grad()
def encode_images(vae: AutoencoderKL, pixels: Tensor, micro_batch: int | None = None) -> Tensor:
    """(B, 3, H, W) pixels in [-1, 1] -> (B, C, H/f, W/f) float32 latents in diffusion space.

    Uses the mean of the latent distribution (not a sample) so that encoding is deterministic: the
    only noise in a training latent is then the frozen data noise the ambient method accounts for.
    ``micro_batch`` images go through the VAE at a time (None: the whole batch in one call).
    """
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be (B, 3, H, W), got shape {tuple(pixels.shape)}")
    dtype = _work_dtype(vae)
    factors = _factors(vae)
    parts = [
        scale_latents(vae.encode(chunk.to(vae.device, dtype)).latent_dist.mean.float(), *factors)
        for chunk in _chunks(pixels, micro_batch)
    ]
    return torch.cat(parts)


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, latents: Tensor, micro_batch: int | None = None) -> Tensor:
    """Diffusion-space latents -> (B, 3, H, W) uint8 images (rounded as diffusers' image processor does).

    ``micro_batch`` latents are decoded at a time (None: the whole batch in one call); images of
    TILE_FROM_PX pixels a side or more are decoded in overlapping tiles (diffusers' tiled decode).
    """
    dtype = _work_dtype(vae)
    parts = []
    with _tiling(vae, latents.shape[-1] * _downsample(vae)):
        for chunk in _chunks(latents, micro_batch):
            raw = unscale_latents(chunk.float(), *_factors(vae))
            image = vae.decode(raw.to(vae.device, dtype)).sample.float()
            parts.append(((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    return torch.cat(parts)


def _downsample(vae: AutoencoderKL) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


@contextmanager
def _tiling(vae: AutoencoderKL, side_px: int) -> Iterator[None]:
    """Tiled decoding of TILE_PX tiles while inside, for images of TILE_FROM_PX a side or more; the
    VAE's own settings are restored afterwards."""
    if side_px < TILE_FROM_PX:
        yield
        return
    names = ("use_tiling", "tile_sample_min_size", "tile_latent_min_size")
    saved = {name: getattr(vae, name) for name in names}
    vae.enable_tiling()
    vae.tile_sample_min_size = TILE_PX
    vae.tile_latent_min_size = TILE_PX // _downsample(vae)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)


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
