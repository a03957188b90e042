"""Exports published to a real S3 (SeaweedFS): a reader sees the previous export or the new one, whole,
never a mix; an upload cut off midway leaves the previous one current; unpublished ones are refused."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.helpers.models import save_tiny_base

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture()
def s3(seaweedfs, tmp_path, monkeypatch):
    """(a fresh prefix, its StorageConfig); the model cache is the test's own."""
    monkeypatch.setenv("AMBIENT_CACHE_DIR", str(tmp_path / "cache"))
    return f"s3://{seaweedfs.bucket}/exports/{uuid.uuid4().hex[:12]}", seaweedfs.storage()


def _versions(uri: str, storage) -> list[str]:
    """The versions holding files (SeaweedFS lists a removed version's emptied folders on)."""
    from ambient.storage import list_files

    return sorted({name.split("/")[0] for name in list_files(f"{uri}/versions", storage)})


def _exports(base_dir: Path, root: Path) -> tuple[Path, Path]:
    """A full export whose merged LoRA UNet ships with lora/, and an export of the plain base UNet."""
    from ambient.models import export_pipeline, load_components
    from ambient.models.lora import add_lora

    unet = load_components(base_dir, text_encoders=False).unet
    add_lora(unet, rank=2)
    with_lora = export_pipeline(base_dir, unet, root / "first", {"run": 1})
    plain = export_pipeline(base_dir, load_components(base_dir).unet, root / "second", {"run": 2})
    return with_lora, plain


def test_publish_to_s3_then_a_crash_mid_upload_then_a_clean_republish(base_dir, s3, tmp_path, monkeypatch):
    import ambient.models.export as export
    from ambient.models import load_components, read_metadata
    from ambient.models.folders import POINTER_FILE, VERSIONS_DIR
    from ambient.models.source import check_model, resolve_model
    from ambient.storage import list_files, read_text

    uri, storage = s3
    first, second = _exports(base_dir, tmp_path)
    assert export.publish_export(first, uri, storage) == f"{uri}/{VERSIONS_DIR}/{first.name}"
    assert json.loads(read_text(f"{uri}/{POINTER_FILE}", storage))["version"] == first.name
    loaded = resolve_model(uri, storage)
    assert read_metadata(loaded)["run"] == 1 and (loaded / "lora").is_dir()

    real, calls = export.upload_file, []

    def failing(local, target, storage=None):
        calls.append(target)
        if len(calls) > len(list_files(str(second))) // 2:
            raise OSError("connection reset")
        real(local, target, storage)

    monkeypatch.setattr(export, "upload_file", failing)
    with pytest.raises(OSError, match="connection reset"):
        export.publish_export(second, uri, storage)
    assert _versions(uri, storage) == sorted([first.name, second.name])
    assert check_model(uri, storage) == uri
    assert resolve_model(uri, storage) == loaded  # the cached copy of the first: nothing changed
    assert read_metadata(loaded)["run"] == 1
    assert load_components(loaded, text_encoders=False).unet is not None

    monkeypatch.setattr(export, "upload_file", real)
    export.publish_export(second, uri, storage)
    now = resolve_model(uri, storage)
    assert now != loaded and not loaded.exists()  # the older cached copy goes
    assert read_metadata(now)["run"] == 2 and not (now / "lora").exists()  # no stale lora/
    assert sorted(p.name for p in now.iterdir()) == sorted(p.name for p in second.iterdir())


def test_publishing_keeps_the_previous_version_and_removes_older_ones(base_dir, s3, tmp_path):
    from ambient.models import read_metadata
    from ambient.models.export import publish_export
    from ambient.models.source import resolve_model

    uri, storage = s3
    first, second = _exports(base_dir, tmp_path)
    publish_export(first, uri, storage)
    publish_export(second, uri, storage)
    assert _versions(uri, storage) == sorted([first.name, second.name])
    third, _ = _exports(base_dir, tmp_path / "again")
    publish_export(third, uri, storage)
    assert _versions(uri, storage) == sorted([second.name, third.name])
    assert read_metadata(resolve_model(uri, storage))["run"] == 1


def test_s3_exports_without_a_pointer_or_with_a_damaged_version_are_refused(base_dir, s3, tmp_path):
    from ambient.models.export import publish_export
    from ambient.models.folders import MANIFEST_FILE, VERSIONS_DIR
    from ambient.models.source import check_model, resolve_model
    from ambient.storage import resolve_filesystem, upload_directory

    def delete(file_uri: str) -> None:
        fs, path = resolve_filesystem(file_uri, storage)
        fs.delete_file(path)

    uri, storage = s3
    first, _ = _exports(base_dir, tmp_path)
    # What an older exporter's upload, or one cut off, leaves: the files without a marker.
    upload_directory(first, f"{uri}/legacy", storage)
    delete(f"{uri}/legacy/{MANIFEST_FILE}")
    for reader in (check_model, resolve_model):
        with pytest.raises(FileNotFoundError, match=rf"{uri}/legacy is an ambient export without CURRENT"):
            reader(f"{uri}/legacy", storage)

    publish_export(first, f"{uri}/damaged", storage)
    delete(f"{uri}/damaged/{VERSIONS_DIR}/{first.name}/lora/pytorch_lora_weights.safetensors")
    for reader in (check_model, resolve_model):
        with pytest.raises(FileNotFoundError, match="lacks lora/pytorch_lora_weights.safetensors"):
            reader(f"{uri}/damaged", storage)

    # A version prefix uploaded as it is (manifest included) loads on its own.
    upload_directory(first, f"{uri}/as-version", storage)
    assert (resolve_model(f"{uri}/as-version", storage) / "lora").is_dir()
