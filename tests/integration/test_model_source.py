"""S3 model folders (ambient.models.source) against a real S3 (SeaweedFS): download, cache, refresh."""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.integration


def test_s3_model_is_cached_by_content_and_pickles_are_never_fetched(
    seaweedfs, tiny_model, tmp_path, monkeypatch
):
    from ambient.models.source import cached_model_dir, resolve_model
    from ambient.storage import upload_directory, write_bytes_atomic

    monkeypatch.setenv("AMBIENT_CACHE_DIR", str(tmp_path / "cache"))
    storage = seaweedfs.storage()
    local = tmp_path / "model"
    shutil.copytree(tiny_model, local)
    (local / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not to be fetched")
    uri = f"s3://{seaweedfs.bucket}/model-source/tiny"
    upload_directory(local, uri, storage)

    first = resolve_model(uri, storage)
    assert first == cached_model_dir(uri, storage) and first.parent == tmp_path / "cache" / "s3-models"
    assert (first / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(first.rglob("*.bin"))
    stamp = (first / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert resolve_model(uri, storage) == first  # unchanged on S3: the cached copy, not downloaded again
    assert (first / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp

    # A model re-exported to the same prefix is fetched again; the stale copy goes.
    write_bytes_atomic(f"{uri}/ambient_metadata.json", json.dumps({"sigma_n": 0.25}).encode(), storage)
    second = resolve_model(uri, storage)
    assert second != first and not first.exists()
    assert json.loads((second / "ambient_metadata.json").read_text()) == {"sigma_n": 0.25}
    assert [p.name for p in second.parent.iterdir()] == [second.name]


def test_s3_prefix_without_a_model_names_what_is_missing(seaweedfs, tmp_path, monkeypatch):
    from ambient.models.source import resolve_model

    monkeypatch.setenv("AMBIENT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="model_index.json is missing"):
        resolve_model(f"s3://{seaweedfs.bucket}/no-model-here", seaweedfs.storage())
    assert not (tmp_path / "cache" / "s3-models").exists() or not any(
        (tmp_path / "cache" / "s3-models").iterdir()
    )
