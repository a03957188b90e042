"""The trainer refuses shards encoded by another VAE than the model's, before Ray starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ambient.config import load_config
from ambient.data.encode import vae_identity
from ambient.data.errors import VaeMismatchError
from ambient.data.schema import MANIFEST_NAME, SCHEMA_VERSION, Manifest, NoiseInfo, SigmaStats, utc_now
from ambient.train.config import FinetuneConfig
from ambient.train.trainer import check_dataset_vae, run_finetune


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny model, a copy of it in another folder (same VAE), and one whose VAE scales differently."""
    from ambient.models import build_tiny_pipeline

    root = tmp_path_factory.mktemp("models")
    base = root / "base"
    build_tiny_pipeline(seed=0, resolution=32).save_pretrained(base, safe_serialization=True)
    shutil.copytree(base, root / "copy")
    shutil.copytree(base, root / "rescaled")
    config_file = root / "rescaled" / "vae" / "config.json"
    config = json.loads(config_file.read_text())
    config["scaling_factor"] = config.get("scaling_factor", 0.18215) * 2
    config_file.write_text(json.dumps(config))
    return {"base": base, "copy": root / "copy", "rescaled": root / "rescaled"}


def _dataset(uri: Path, model: Path) -> str:
    uri.mkdir(parents=True)
    vae = vae_identity(str(model))
    manifest = Manifest(
        dataset_id="t",
        schema_version=SCHEMA_VERSION,
        complete=True,
        created_at=utc_now(),
        space="latent",
        tensor_shape=[vae.latent_channels, 4, 4],
        resolution=4 * vae.downsample_factor,
        num_rows=0,
        num_shards=0,
        shards=[],
        sigma_n=SigmaStats(min=0.5, max=0.5, mean=0.5, clean_rows=0),
        noise=NoiseInfo(seed=0, sigma_n=0.5),
        vae=vae,
    )
    (uri / MANIFEST_NAME).write_text(manifest.model_dump_json())
    return str(uri)


def _cfg(model: Path, data: str, tmp_path: Path, *extra: str) -> FinetuneConfig:
    values = [f"model.path={model}", f"data.uri={data}", f"run.storage_path={tmp_path / 'ray'}", *extra]
    return load_config(FinetuneConfig, None, values)


def test_shards_of_another_vae_fail_naming_both_before_ray_starts(models, tmp_path, monkeypatch):
    import ambient.train.trainer as trainer

    cluster_calls: list[tuple] = []  # observed, not replaced: Ray may already run for other tests
    monkeypatch.setattr(trainer, "init_ray", lambda *args, **kwargs: cluster_calls.append(args))
    data = _dataset(tmp_path / "shards", models["base"])
    cfg = _cfg(models["rescaled"], data, tmp_path)
    with pytest.raises(VaeMismatchError) as err:
        run_finetune(cfg)
    message = str(err.value)
    assert "scaling_factor" in message and "config_sha256" in message
    assert str(models["base"]) in message and str(models["rescaled"]) in message
    assert "data.allow_vae_mismatch" in message
    assert cluster_calls == []  # failed before any cluster work


def test_the_same_vae_in_another_folder_passes_and_the_override_allows_a_shared_vae(models, tmp_path):
    data = _dataset(tmp_path / "shards", models["base"])
    check_dataset_vae(_cfg(models["copy"], data, tmp_path), str(models["copy"]))
    check_dataset_vae(
        _cfg(models["rescaled"], data, tmp_path, "data.allow_vae_mismatch=true"), str(models["rescaled"])
    )
