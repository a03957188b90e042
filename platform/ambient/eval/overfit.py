"""A deliberately memorising model, for testing and calibrating the audit.

Over-fits a model's UNet on a handful of items' *clean* latents with a plain PyTorch loop (no Ray, no
DeepSpeed) and exports the result as a diffusers folder. The loss is the x0-space denoising error
||h(x0 + sigma z, sigma) - x0||^2 at SDXL timesteps drawn uniformly from ``t_range``: with one caption
per image the minimiser is the training image itself, which is exactly the memorization the audit
must detect. Aim ``t_range`` at the attack's timesteps to memorise in fewer steps.
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
) -> tuple[Path, dict]:
    """(exported folder, report with the loss at the start and the end and the seconds taken)."""
    if items.pixels is None:
        raise ValueError("overfit_model needs the items' pixels")
    comps = load_components(model_dir)
    height, width = items.pixels.shape[-2:]
    x0 = encode_images(comps.vae, items.pixels)
    denoiser, _ = caption_denoiser(comps, items.captions, height, width)
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
        with torch.enable_grad():
            loss = ((denoiser(x_t, sigma) - x0) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        losses.append(loss.item())
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
