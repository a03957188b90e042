"""Noise levels are checked against SDXL's training schedule when the config is read, naming the field,
instead of failing inside the workers (no training level above sigma_max ~ 14.6)."""

from __future__ import annotations

import pytest

from ambient.config import ConfigError, load_config
from ambient.core import sdxl_alphas_cumprod, ve_sigmas
from ambient.data import PrepareShardsConfig
from ambient.schedule import LEVEL_MARGIN, highest_trainable_sigma, sdxl_sigma, sdxl_train_sigmas
from ambient.train import FinetuneConfig
from ambient.tune import SweepConfig


def test_schedule_matches_the_core_conversions():
    expected = ve_sigmas(sdxl_alphas_cumprod()).tolist()
    assert sdxl_train_sigmas() == pytest.approx(expected, rel=1e-9)
    assert 14.5 < sdxl_train_sigmas()[-1] < 14.7 and len(expected) == 1000
    assert sdxl_sigma(500) == pytest.approx(expected[500])
    assert highest_trainable_sigma() == pytest.approx(expected[-1] / (1 + LEVEL_MARGIN))


@pytest.mark.parametrize(
    ("cls", "overrides", "field"),
    [
        (PrepareShardsConfig, ["noise.sigma_n=null", "noise.t_n=999"], "noise.t_n = 999"),
        (PrepareShardsConfig, ["noise.sigma_n=14.61"], "noise.sigma_n = 14.61"),
        (PrepareShardsConfig, ["noise.sigma_n=100"], "noise.sigma_n = 100"),
        (FinetuneConfig, ["loss.sigma_train=20"], "loss.sigma_train = 20"),
        (SweepConfig, ["space.sigma_train=[0.5, 30]"], "space.sigma_train = 30"),
        (SweepConfig, ["base.loss.sigma_train=1e6"], "loss.sigma_train = 1e+06"),
    ],
)
def test_levels_beyond_the_schedule_are_rejected_naming_the_field(cls, overrides, field):
    with pytest.raises(ConfigError, match="leaves no SDXL training level above it") as info:
        load_config(cls, None, overrides)
    assert field in str(info.value)


def test_levels_inside_the_schedule_are_accepted():
    assert load_config(PrepareShardsConfig, None, ["noise.sigma_n=null", "noise.t_n=998"]).noise.t_n == 998
    assert load_config(FinetuneConfig, None, ["loss.sigma_train=14.5"]).loss.sigma_train == 14.5
    assert load_config(SweepConfig, None, ["space.sigma_train=[0.5, 14]"]).space.sigma_train == [0.5, 14]
