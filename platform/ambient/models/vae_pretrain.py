"""The untrained tiny model: the tiny SDXL pipeline with its VAE trained on the synthetic dataset.

A random VAE decodes anything to noise, so this first teaches the tiny VAE to reconstruct the
synthetic shapes (a minute or two on a 2-core CPU), sets its scaling_factor so that diffusion-space
latents have unit spread, and caches the folder: later calls return it at once. The UNet stays
random: this is where ``make base-model`` starts pre-training the default base model
(ambient.models.base_model), and what "an untrained model" means in the tests.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import Tensor

from ..storage import local_folder_atomic
from ..synthetic import synthetic_items
from ..threads import torch_threads
from .tiny import build_tiny_pipeline
from .vae import pil_to_tensor

logger = logging.getLogger(__name__)

MODEL_NAME = "tiny-sdxl-untrained"
# Bump when the architecture or the training recipe changes: cached folders of another recipe are rebuilt.
RECIPE = 4
REPORT_FILE = "vae_pretrain.json"  # inside the model folder, so that it appears atomically with it
DEFAULT_STEPS = 600
RESOLUTION = 64
TRAIN_POOL = 2048  # distinct synthetic images drawn from
EVAL_START, EVAL_COUNT = 1_000_000, 64  # held-out items for the PSNR


def default_cache_dir() -> Path:
    return Path(os.environ.get("AMBIENT_CACHE_DIR") or Path.home() / ".cache" / "ambient")


def _model_name(seed: int, steps: int) -> str:
    # Non-default settings get their own folder, so a short test run never poisons the default one.
    name = MODEL_NAME
    if seed != 0:
        name += f"-seed{seed}"
    if steps != DEFAULT_STEPS:
        name += f"-steps{steps}"
    return name


@contextmanager
def file_lock(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes, even if the process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_untrained_model(
    cache_dir: Path | None = None, seed: int = 0, *, steps: int = DEFAULT_STEPS
) -> Path:
    """Path of the cached default model folder, building it first if needed.

    ``cache_dir`` defaults to $AMBIENT_CACHE_DIR or ~/.cache/ambient. Concurrent callers serialise on
    a file lock; the folder is built in a temporary directory and renamed into place, so it is either
    complete or absent. ``steps`` (VAE training steps) is for tests; non-default values are cached
    under their own name.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / _model_name(seed, steps)
    if _is_current(final):
        return final
    with file_lock(root / f"{final.name}.lock"):
        if _is_current(final):  # another process built it while we waited
            return final
        # A folder built by an older recipe is swapped out for the new one.
        with local_folder_atomic(final) as tmp:
            pipe = build_tiny_pipeline(seed=seed, resolution=RESOLUTION)
            report = pretrain_vae(pipe.vae, steps=steps, seed=seed)
            pipe.save_pretrained(tmp, safe_serialization=True)
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    logger.info("untrained model cached at %s (reconstruction PSNR %.2f dB)", final, report["psnr_db"])
    return final


def _is_current(folder: Path) -> bool:
    try:
        report = json.loads((folder / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return False
    return report.get("recipe") == RECIPE


def _pixels(count: int, seed: int, start: int = 0) -> Tensor:
    return pil_to_tensor([it.image for it in synthetic_items(count, seed=seed, size=RESOLUTION, start=start)])


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, pixels: Tensor, batch_size: int = 32) -> float:
    """PSNR (dB) of encode(mean) -> decode against the originals, both rounded to 8 bits."""
    vae.eval()
    mse = 0.0
    for chunk in pixels.split(batch_size):
        rec = vae.decode(vae.encode(chunk).latent_dist.mean).sample
        to_u8 = lambda t: ((t / 2 + 0.5).clamp(0, 1) * 255).round()
        mse += ((to_u8(rec) - to_u8(chunk)) ** 2).mean().item() * len(chunk)
    mse /= len(pixels)
    return 10 * math.log10(255**2 / max(mse, 1e-10))


@torch.no_grad()
def latent_std(vae: AutoencoderKL, pixels: Tensor) -> float:
    return vae.encode(pixels).latent_dist.mean.std().item()


def _random_crops(images: Tensor, size: int, gen: torch.Generator) -> Tensor:
    h, w = images.shape[-2:]
    if size >= min(h, w):
        return images
    top = torch.randint(h - size + 1, (len(images),), generator=gen).tolist()
    left = torch.randint(w - size + 1, (len(images),), generator=gen).tolist()
    return torch.stack(
        [im[:, t : t + size, s : s + size] for im, t, s in zip(images, top, left, strict=True)]
    )


def _log_step(step: int, steps: int, loss: float, elapsed: float) -> None:
    eta = elapsed / step * (steps - step)
    logger.info(
        "vae pretrain step %d/%d  loss %.4f  elapsed %.0fs  eta %.0fs", step, steps, loss, elapsed, eta
    )


def pretrain_vae(
    vae: AutoencoderKL,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    batch_size: int = 16,
    crop: int = 32,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    log_every: int = 50,
    threads: int | None = None,
) -> dict[str, float]:
    """Train ``vae`` (in place) to reconstruct synthetic images; set its scaling_factor. Returns a report."""
    with torch_threads(threads):
        gen = torch.Generator().manual_seed(seed)
        train = _pixels(TRAIN_POOL, seed)
        held_out = _pixels(EVAL_COUNT, seed, start=EVAL_START)
        psnr_before = reconstruction_psnr(vae, held_out)
        opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
        warmup = max(1, steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i / steps, 1.0)))
        )
        vae.train()
        start = time.monotonic()
        for step in range(1, steps + 1):
            batch = _random_crops(train[torch.randint(len(train), (batch_size,), generator=gen)], crop, gen)
            posterior = vae.encode(batch).latent_dist
            recon = vae.decode(posterior.mean).sample
            # L1 keeps the flat colours and edges sharp, MSE speeds the start; a whisper of KL bounds the
            # latents. Decoding the mean, not a sample: the encoder's initial unit variance drowns the
            # signal and the tiny VAE then learns far too slowly for a CPU budget.
            err = recon - batch
            loss = err.abs().mean() + (err**2).mean() + kl_weight * posterior.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % log_every == 0 or step == steps:
                _log_step(step, steps, loss.item(), time.monotonic() - start)
        seconds = time.monotonic() - start
        vae.eval()
        # Unit-variance diffusion latents, as SD's 0.18215 / SDXL's 0.13025 were chosen.
        scaling = 1.0 / latent_std(vae, held_out)
        vae.register_to_config(scaling_factor=scaling)
        return {
            "recipe": RECIPE,
            "steps": steps,
            "batch_size": batch_size,
            "seconds": round(seconds, 2),
            "psnr_db": round(reconstruction_psnr(vae, held_out), 3),
            "psnr_db_untrained": round(psnr_before, 3),
            "scaling_factor": scaling,
            "seed": seed,
            "resolution": RESOLUTION,
        }
