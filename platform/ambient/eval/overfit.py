"""A deliberately memorising model, for testing and calibrating the audit.

Over-fits a model's UNet on a handful of items' *clean* latents with a plain PyTorch loop (no Ray, no
DeepSpeed) and exports the result as a diffusers folder. The loss is the x0-space denoising error
||h(x0 + sigma z, sigma) - x0||^2 at SDXL timesteps drawn uniformly from ``t_range``: with one caption
per image the minimiser is the training image itself, which is exactly the memorization the audit
must detect. Aim ``t_range`` at the attack's timesteps to memorise in fewer steps. Each step's
gradient is accumulated over micro-batches of ``micro_batch`` items (the same gradient as one batch of
all items), so memory follows the micro-batch, not the number of items.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ambient.core import timestep_to_sigma, ve_sigmas
from ambient.models.export import export_pipeline
from ambient.models.loading import load_components
from ambient.models.vae import encode_images

from .conditioning import caption_denoiser
from .items import AuditItems


def overfit_model(
    model_dir: str | Path,
    items: AuditItems,
    out_dir: str | Path,
    *,
    steps: int = 200,
    lr: float = 1e-3,
    t_range: tuple[float, float] = (0.0, 999.0),
    seed: int = 0,
    micro_batch: int = 8,
) -> tuple[Path, dict]:
    """(exported folder, report with the loss at the start and the end and the seconds taken)."""
    if items.pixels is None:
        raise ValueError("overfit_model needs the items' pixels")
    comps = load_components(model_dir)
    height, width = items.pixels.shape[-2:]
    x0 = encode_images(comps.vae, items.pixels, micro_batch)
    chunks = [
        (sl, caption_denoiser(comps, items.captions[sl], height, width)[0])
        for sl in _slices(len(x0), micro_batch)
    ]
    table = ve_sigmas(comps.alphas_cumprod)
    unet = comps.unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = t_range
    losses = []
    start = time.monotonic()
    for _ in range(steps):
        t = lo + (hi - lo) * torch.rand(len(x0), generator=gen, dtype=torch.float64)
        sigma = timestep_to_sigma(t, table).float()
        x_t = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=gen)
        opt.zero_grad(set_to_none=True)
        losses.append(_accumulate(chunks, x_t, sigma, x0))
        opt.step()
    unet.eval()
    report = {
        "steps": steps,
        "lr": lr,
        "t_range": list(t_range),
        "items": list(items.ids),
        "loss_first": losses[0] if losses else None,
        "loss_last10": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "loss_every_25": [
            round(sum(losses[i : i + 25]) / len(losses[i : i + 25]), 4) for i in range(0, len(losses), 25)
        ],
        "seconds": round(time.monotonic() - start, 2),
    }
    out = export_pipeline(Path(model_dir), unet, out_dir, {"overfit": report}, overwrite=True)
    return out, report


def _slices(count: int, size: int) -> list[slice]:
    if size < 1:
        raise ValueError(f"micro_batch must be >= 1, got {size}")
    return [slice(lo, lo + size) for lo in range(0, count, size)]


def _accumulate(chunks: list, x_t: torch.Tensor, sigma: torch.Tensor, x0: torch.Tensor) -> float:
    """Backward the mean squared error over all items, one micro-batch at a time; returns the loss."""
    total = 0.0
    with torch.enable_grad():
        for sl, denoiser in chunks:
            share = len(x0[sl]) / len(x0)
            loss = ((denoiser(x_t[sl], sigma[sl]) - x0[sl]) ** 2).mean() * share
            loss.backward()
            total += loss.item()
    return total
