"""Fixtures for the training, serving and sweep tests: the tiny demo model and small demo shards."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """The default tiny SDXL folder (VAE pre-trained once, cached under ~/.cache/ambient)."""
    from ambient.models.base_model import ensure_default_model

    return str(ensure_default_model())


@pytest.fixture(scope="session")
def demo_shards(tiny_model, ray_session, tmp_path_factory) -> str:
    """64 synthetic rows at 64 px with sigma_n = 0.5, encoded by the tiny model's VAE."""
    from ambient.data.config import DestinationConfig, EncodeConfig, PrepareShardsConfig, SourceConfig
    from ambient.data.prepare import prepare_shards

    uri = str(tmp_path_factory.mktemp("finetune-shards") / "shards")
    prepare_shards(
        PrepareShardsConfig(
            source=SourceConfig(count=64),
            destination=DestinationConfig(uri=uri),
            encode=EncodeConfig(model=tiny_model),
            rows_per_shard=16,
        )
    )
    return uri


@pytest.fixture(scope="session")
def untrained_model() -> str:
    """The tiny architecture with only its VAE trained (the UNet random): what the audit tests compare
    a deliberately over-fit model against (cached under ~/.cache/ambient)."""
    from ambient.models.vae_pretrain import ensure_untrained_model

    return str(ensure_untrained_model())
