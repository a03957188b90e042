"""Forward passes outside the training step run in config-sized micro-batches: peak memory follows the
micro-batch, not the number of rows or prompts, and the results do not change."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ambient.config import ConfigError, load_config
from ambient.data import PrepareShardsConfig
from ambient.eval import AuditConfig
from ambient.memory import peak_cpu_bytes, single_threaded
from ambient.models import SDXLComponents, build_tiny_pipeline, decode_latents, encode_images
from ambient.models import vae as vae_module
from ambient.models.denoiser import SDXLDenoiser
from ambient.models.sampling import sample_images, sample_latents
from ambient.threads import default_threads
from ambient.train import FinetuneConfig
from ambient.train.config import ValidationSection
from ambient.train.validation import validation_ambient_loss

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _threads():
    # On a shared 2-core machine, two OpenMP threads spinning against other processes run ~10x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(default_threads())
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def comps() -> SDXLComponents:
    return SDXLComponents.from_pipeline(build_tiny_pipeline(seed=0, resolution=32))


@pytest.fixture(scope="module")
def denoiser(comps: SDXLComponents) -> SDXLDenoiser:
    return SDXLDenoiser(comps.unet, comps.alphas_cumprod)


def holdout(comps: SDXLComponents, rows: int) -> dict:
    """Held-out rows as read_rows returns them (the model's latent shape, per-row levels)."""
    gen = torch.Generator().manual_seed(rows)
    side = comps.unet.config.sample_size
    return {
        "latent": torch.randn(rows, comps.unet.config.in_channels, side, side, generator=gen),
        "sigma_n": torch.rand(rows, generator=gen) + 0.25,
        "captions": [f"a red circle on a blue background {i}" for i in range(rows)],
        "original_size_hw": torch.tensor([[32, 32]] * rows),
        "crop_top_left": torch.zeros(rows, 2, dtype=torch.long),
    }


def loss_and_peak(denoiser, comps, batch: dict, micro_batch: int) -> tuple[float, int]:
    def run() -> float:
        return validation_ambient_loss(
            denoiser, comps, batch, denoiser.train_sigmas, seed=0, device=CPU, micro_batch=micro_batch
        )

    return single_threaded(lambda: peak_cpu_bytes(run))


def test_validation_peak_memory_does_not_grow_with_the_held_out_rows(comps, denoiser):
    micro_batch = ValidationSection().micro_batch
    _, peak_8 = loss_and_peak(denoiser, comps, holdout(comps, 8), micro_batch)
    _, peak_64 = loss_and_peak(denoiser, comps, holdout(comps, 64), micro_batch)
    assert abs(peak_64 - peak_8) <= 0.1 * peak_8, (peak_8, peak_64)


def test_chunked_validation_loss_equals_the_whole_batch_loss(comps, denoiser):
    batch = holdout(comps, 5)
    whole = validation_ambient_loss(
        denoiser, comps, batch, denoiser.train_sigmas, seed=3, device=CPU, micro_batch=10**6
    )
    for micro_batch in (1, 3, 8):
        chunked = validation_ambient_loss(
            denoiser, comps, batch, denoiser.train_sigmas, seed=3, device=CPU, micro_batch=micro_batch
        )
        assert chunked == pytest.approx(whole, rel=1e-5)


def test_chunked_sampling_gives_the_same_latents_and_images(comps):
    prompts = ["a red circle", "a green ring", "", "a blue square", "a yellow star"]
    settings = {"num_steps": 3, "guidance_scale": 3.0, "seed": 11, "method": "euler"}
    whole = sample_latents(comps, prompts, **settings)
    chunked = sample_latents(comps, prompts, micro_batch=2, **settings)
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-4)
    negatives = ["", "blue", "red", "", "green"]
    posterior = {**settings, "method": "posterior", "negative_prompts": negatives}
    torch.testing.assert_close(
        sample_latents(comps, prompts, micro_batch=3, **posterior),
        sample_latents(comps, prompts, **posterior),
        rtol=1e-4,
        atol=1e-4,
    )
    images = np.stack([np.asarray(im) for im in sample_images(comps, prompts, micro_batch=2, **settings)])
    reference = np.stack([np.asarray(im) for im in sample_images(comps, prompts, **settings)])
    assert np.abs(images.astype(int) - reference.astype(int)).max() <= 1  # 8-bit rounding of float noise


def test_vae_micro_batches_give_the_whole_batch_result(comps):
    pixels = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = encode_images(comps.vae, pixels)
    torch.testing.assert_close(encode_images(comps.vae, pixels, micro_batch=2), latents, rtol=1e-5, atol=1e-5)
    images = decode_latents(comps.vae, latents)
    assert (decode_latents(comps.vae, latents, micro_batch=2).int() - images.int()).abs().max() <= 1
    with pytest.raises(ValueError, match="micro_batch must be >= 1"):
        decode_latents(comps.vae, latents, micro_batch=0)


def test_large_images_decode_in_tiles_and_the_vae_settings_come_back(comps, monkeypatch):
    vae = comps.vae
    monkeypatch.setattr(vae_module, "TILE_FROM_PX", 32)
    monkeypatch.setattr(vae_module, "TILE_PX", 16)
    seen = []
    original = vae.tiled_decode
    monkeypatch.setattr(vae, "tiled_decode", lambda z, **kw: seen.append(z.shape) or original(z, **kw))
    before = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
    images = decode_latents(vae, torch.randn(3, 4, 8, 8), micro_batch=2)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert len(seen) == 2  # one tiled decode per micro-batch
    assert (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size) == before


def test_a_vae_that_overflows_in_float16_is_kept_in_float32():
    sdxl_like = SimpleNamespace(config=SimpleNamespace(force_upcast=True))
    plain = SimpleNamespace(config=SimpleNamespace())
    assert vae_module.vae_dtype(sdxl_like, torch.float16) == torch.float32
    assert vae_module.vae_dtype(sdxl_like, torch.bfloat16) == torch.bfloat16
    assert vae_module.vae_dtype(plain, torch.float16) == torch.float16


@pytest.mark.parametrize(
    ("cls", "override", "field"),
    [
        (FinetuneConfig, "validation.micro_batch=0", "validation.micro_batch"),
        (FinetuneConfig, "validation.sample_micro_batch=0", "validation.sample_micro_batch"),
        (FinetuneConfig, "showcase.micro_batch=0", "showcase.micro_batch"),
        (PrepareShardsConfig, "encode.micro_batch=0", "encode.micro_batch"),
        (AuditConfig, "batch_size=0", "batch_size"),
    ],
)
def test_micro_batches_below_one_are_rejected_naming_the_field(cls, override, field):
    with pytest.raises(ConfigError) as info:
        load_config(cls, None, [override])
    assert field in str(info.value)
