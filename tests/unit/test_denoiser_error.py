"""The denoiser-error metric of the image study (ambient.eval.denoiser_error), on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from ambient.eval.denoiser_error import ABOVE, BELOW, band_levels, denoiser_error, denoiser_error_bands
from ambient.models.loading import SDXLComponents
from ambient.models.tiny import build_tiny_pipeline


class _ZeroEpsilon(torch.nn.Module):
    """A stand-in UNet predicting epsilon = 0, so the denoiser returns its input: x0_hat = x0 + sigma z."""

    def __init__(self, unet) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.config = unet.config

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def forward(self, sample, timestep, **_):
        return (torch.zeros_like(sample),)


@pytest.fixture(scope="module")
def comps() -> SDXLComponents:
    return SDXLComponents.from_pipeline(build_tiny_pipeline(seed=0))


def _items(n: int) -> tuple[torch.Tensor, list[str], list[str]]:
    latents = torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return latents, [f"item-{i}" for i in range(n)], ["a red star on a blue background"] * n


def test_bands_lie_below_and_above_sigma_n():
    below, above = band_levels(0.5, BELOW, 4), band_levels(0.5, ABOVE, 4)
    assert below[0] == pytest.approx(0.025) and below[-1] == pytest.approx(0.4)
    assert above[0] == pytest.approx(0.625) and above[-1] == pytest.approx(2.0)
    assert all(a < b for a, b in zip(below, below[1:], strict=False))
    with pytest.raises(ValueError, match="sigma_n > 0"):
        band_levels(0.0, BELOW, 4)


def test_an_identity_denoiser_scores_sigma_squared(comps):
    epsilon = comps.scheduler.__class__.from_config(comps.scheduler.config, prediction_type="epsilon")
    identity = SDXLComponents(**{**comps.__dict__, "unet": _ZeroEpsilon(comps.unet), "scheduler": epsilon})
    latents, ids, captions = _items(32)
    for sigma in (0.1, 1.0):
        error = denoiser_error(identity, latents, ids, captions, sigma, batch_size=8)
        assert error == pytest.approx(sigma**2, rel=0.1)  # 2,048 standard normal elements


def test_the_noise_is_frozen_and_the_bands_are_reported(comps):
    latents, ids, captions = _items(4)
    first = denoiser_error_bands(comps, latents, ids, captions, 0.5, points=2, seed=3)
    again = denoiser_error_bands(comps, latents, ids, captions, 0.5, points=2, seed=3)
    assert first == again
    assert first["below_levels"] == pytest.approx([0.025, 0.4]) and len(first["above_errors"]) == 2
    assert math.isfinite(first["below"]) and first["below"] > 0
    other = denoiser_error(comps, latents, ids, captions, 0.4, seed=4)
    assert other != pytest.approx(first["below_errors"][1], rel=1e-6)
