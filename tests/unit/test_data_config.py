"""Config validation of prepare_shards, the noise conversion and the storage settings (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from ambient.config import ConfigError, load_config, redacted
from ambient.core import sdxl_alphas_cumprod, timestep_to_sigma, ve_sigmas
from ambient.data import PrepareShardsConfig
from ambient.data.prepare import noise_sigma
from ambient.storage import StorageConfig

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "jobs" / "configs" / "prepare_demo.yaml"


def test_demo_config_is_valid():
    cfg = load_config(PrepareShardsConfig, DEMO)
    assert cfg.source.kind == "synthetic" and cfg.destination.uri == "runs/demo/shards"
    assert noise_sigma(cfg.noise) == 0.5 and cfg.resolution == 64
    assert cfg.destination.remove_stale_shards is True
    off = load_config(PrepareShardsConfig, DEMO, ["destination.remove_stale_shards=false"])
    assert off.destination.remove_stale_shards is False


def test_the_finetune_prepares_missing_demo_data_as_the_demo_config_does():
    from ambient.train.trainer import DEMO_SOURCE

    assert load_config(PrepareShardsConfig, DEMO).source == DEMO_SOURCE


def test_encode_workers_reads_the_old_name_actors():
    assert load_config(PrepareShardsConfig, None, ["encode.actors=3"]).encode.workers == 3
    assert load_config(PrepareShardsConfig, None, ["encode.workers=2"]).encode.workers == 2
    with pytest.raises(ConfigError, match="encode.actors"):  # both names at once: the old one is extra
        load_config(PrepareShardsConfig, DEMO, ["encode.actors=3"])


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["noise.t_n=100"], "noise"),  # both sigma_n and t_n
        (["noise.sigma_n=-1"], "noise.sigma_n"),
        (["noise.sigma_n=null", "noise.t_n=1000"], "noise.t_n"),
        (["source.kind=folder"], "source"),
        (["source.kind=tarball"], "source.kind"),
        (["source.kind=webdataset"], "source"),  # a webdataset needs source.path
        (["resolution=abc"], "resolution"),
        (["encode.workers=0"], "encode.workers"),
        (["rows_per_shard=0"], "rows_per_shard"),
        (["storage.endpoint=http://x"], "storage.endpoint"),
        (["destination.remove_stale_shards=maybe"], "destination.remove_stale_shards"),
        (["source.replay_world=null"], "source"),  # the demo's share without a world
        (["source.replay_share=0"], "source"),  # the demo's world without a share
        (["source.replay_world=cross", "source.replay_share=0.25"], "source"),  # the demo's own world
        (["source.replay_world=base", "source.replay_share=1"], "source.replay_share"),
        (["source.partial_captions=1.5"], "source.partial_captions"),
        (["source.kind=folder", "source.path=/tmp", "source.partial_captions=0.5"], "source"),
    ],
)
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=rf"\n  {field}: "):
        load_config(PrepareShardsConfig, DEMO, overrides)


def test_t_n_is_converted_on_sdxl_schedule():
    cfg = load_config(PrepareShardsConfig, DEMO, ["noise.sigma_n=null", "noise.t_n=500"])
    expected = float(timestep_to_sigma(500, ve_sigmas(sdxl_alphas_cumprod())))
    assert noise_sigma(cfg.noise) == pytest.approx(expected)
    assert 1.5 < expected < 1.8  # DESIGN: t_n = 500 is sigma_VE about 1.62


def test_storage_env_fallback_and_secrets_stay_secret(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1234")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    r = StorageConfig().resolved()
    assert (r.endpoint_url, r.region) == ("http://127.0.0.1:1234", "eu-west-3")
    assert r.secret_access_key.get_secret_value() == "env-secret"
    explicit = StorageConfig(
        endpoint_url="http://other:9000", secret_access_key=SecretStr("cfg-secret")
    ).resolved()
    assert (
        explicit.endpoint_url == "http://other:9000"
        and explicit.secret_access_key.get_secret_value() == "cfg-secret"
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:1")
    assert StorageConfig().resolved().endpoint_url == "http://s3-specific:1"
    cfg = load_config(PrepareShardsConfig, DEMO, ["storage.secret_access_key=top-secret"])
    assert "top-secret" not in json.dumps(redacted(cfg)) and "top-secret" not in repr(cfg)
