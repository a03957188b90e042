"""The reconstruction attack: corrupt training latents heavily, reconstruct with the model, compare.

For each item: x0 = VAE latent of the original; x_t = erase(x0) + sigma_t z with sigma_t the VE level of
SDXL timestep t and z frozen per (item id, seed), so every model sees the same corruption. Two
reconstructions, both conditioned on the item's caption: one Tweedie step x0_hat = h(x_t, sigma_t) (the
model's posterior mean) and the whole sampler run from sigma_t down to 0. A model that memorised its
training set returns the original from a point that holds almost none of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ambient.core import frozen_noise, full_schedule, sample, timestep_to_sigma, ve_sigmas
from ambient.models.loading import SDXLComponents
from ambient.models.vae import decode_latents, encode_images

from .conditioning import caption_denoiser
from .features import FeatureSpace
from .results import AttackSummary, ItemAttack

MASKS = ("none", "center", "right_half", "bottom_half")


def erase_mask(shape: tuple[int, ...], mask: str, fraction: float = 0.5) -> Tensor:
    """(1, 1, h, w) of 1 where the original is kept, 0 where it is erased before noising."""
    h, w = shape[-2:]
    keep = torch.ones(1, 1, h, w)
    if mask == "none":
        return keep
    if mask == "center":
        mh, mw = max(1, round(h * fraction)), max(1, round(w * fraction))
        top, left = (h - mh) // 2, (w - mw) // 2
        keep[..., top : top + mh, left : left + mw] = 0
    elif mask == "right_half":
        keep[..., :, w // 2 :] = 0
    elif mask == "bottom_half":
        keep[..., h // 2 :, :] = 0
    else:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    return keep


def to_uint8(pixels: Tensor) -> Tensor:
    """[-1, 1] float -> uint8, rounded as decode_latents rounds."""
    return ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR (dB) of two uint8 batches."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse.clamp(min=1e-10))


@dataclass
class AttackResult:
    timestep: float
    sigma: float
    mask: str
    tweedie_similarity: Tensor  # (N,) feature cosine to the original
    tweedie_psnr: Tensor  # (N,) dB
    sample_similarity: Tensor | None = None
    sample_psnr: Tensor | None = None
    images: dict[str, Tensor] = field(default_factory=dict)  # uint8 (N, 3, H, W): corrupted, tweedie, sample

    def summary(self) -> AttackSummary:
        sampled = self.sample_similarity is not None and self.sample_psnr is not None
        return AttackSummary(
            timestep=self.timestep,
            sigma=self.sigma,
            mask=self.mask,
            tweedie_similarity_mean=float(self.tweedie_similarity.mean()),
            tweedie_similarity_max=float(self.tweedie_similarity.max()),
            tweedie_psnr_mean=float(self.tweedie_psnr.mean()),
            sample_similarity_mean=float(self.sample_similarity.mean()) if sampled else None,
            sample_similarity_max=float(self.sample_similarity.max()) if sampled else None,
            sample_psnr_mean=float(self.sample_psnr.mean()) if sampled else None,
        )

    def per_item(self) -> ItemAttack:
        """The numbers of each item, in the items' order."""
        return ItemAttack(
            timestep=self.timestep,
            tweedie_similarity=self.tweedie_similarity.tolist(),
            tweedie_psnr=self.tweedie_psnr.tolist(),
            sample_similarity=None if self.sample_similarity is None else self.sample_similarity.tolist(),
            sample_psnr=None if self.sample_psnr is None else self.sample_psnr.tolist(),
        )


def attack_sigma(comps: SDXLComponents, timestep: float) -> float:
    """VE sigma of an SDXL DDPM timestep on the model's own schedule."""
    return float(timestep_to_sigma(timestep, ve_sigmas(comps.alphas_cumprod)))


@torch.no_grad()
def reconstruction_attack(
    comps: SDXLComponents,
    ids: list[str],
    captions: list[str],
    originals: Tensor,
    space: FeatureSpace,
    *,
    timestep: float = 900.0,
    mask: str = "none",
    mask_fraction: float = 0.5,
    run_sampler: bool = True,
    steps: int = 16,
    guidance: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
) -> AttackResult:
    """Attack every item (``originals``: pixels (N, 3, H, W) in [-1, 1]) at one timestep."""
    sigma = attack_sigma(comps, timestep)
    height, width = originals.shape[-2:]
    truth = to_uint8(originals)
    parts: dict[str, list[Tensor]] = {"corrupted": [], "tweedie": [], "sample": []}
    for start in range(0, len(ids), batch_size):
        sl = slice(start, start + batch_size)
        x0 = encode_images(comps.vae, originals[sl])
        keep = erase_mask(tuple(x0.shape), mask, mask_fraction)
        z = frozen_noise(ids[sl], seed, tuple(x0.shape[1:]), stream=f"audit-attack-{timestep:g}")
        x_t = x0 * keep + sigma * z
        denoiser, base = caption_denoiser(comps, captions[sl], height, width, guidance)
        sig = torch.full((len(x0),), sigma)
        # What the UNet sees, decoded: the VP-scaled corrupted latent.
        parts["corrupted"].append(decode_latents(comps.vae, x_t / (1 + sigma**2) ** 0.5))
        parts["tweedie"].append(decode_latents(comps.vae, denoiser(x_t, sig)))
        if run_sampler:
            schedule = full_schedule(steps, base.sigma_min, sigma)
            parts["sample"].append(decode_latents(comps.vae, sample(denoiser, x_t, schedule, method="heun")))
    images = {k: torch.cat(v) for k, v in parts.items() if v}
    result = AttackResult(
        timestep=float(timestep),
        sigma=sigma,
        mask=mask,
        tweedie_similarity=space.paired(images["tweedie"], truth),
        tweedie_psnr=psnr(images["tweedie"], truth),
        images=images,
    )
    if run_sampler:
        result.sample_similarity = space.paired(images["sample"], truth)
        result.sample_psnr = psnr(images["sample"], truth)
    return result
