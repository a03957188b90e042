"""Exports are published whole or not at all: versions, the CURRENT.json pointer, and every reader's
refusal of an export without it (local folders; S3 is in tests/integration/test_export_atomic.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ambient.models import load_components
from ambient.models.export import export_adapter, export_pipeline, publish_export, read_metadata
from ambient.models.folders import (
    MANIFEST_FILE,
    METADATA_FILE,
    POINTER_FILE,
    VERSIONS_DIR,
    check_model_dir,
    file_sha256,
    resolve_export,
)
from ambient.models.lora import add_lora
from tests.helpers.models import save_tiny_base


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture()
def lora_unet(base_dir):
    unet = load_components(base_dir, text_encoders=False).unet
    add_lora(unet, rank=2)
    return unet


def _pointer(root: Path) -> dict:
    return json.loads((root / POINTER_FILE).read_text())


def test_an_export_is_a_version_named_by_the_pointer_with_every_file_listed(base_dir, tmp_path):
    root = tmp_path / "model"
    version = export_pipeline(base_dir, load_components(base_dir).unet, root, {"sigma_n": 0.1})
    pointer = _pointer(root)
    assert version == root / VERSIONS_DIR / pointer["version"]
    assert sorted(p.name for p in root.iterdir()) == [POINTER_FILE, VERSIONS_DIR]
    assert [p.name for p in (root / VERSIONS_DIR).iterdir()] == [version.name]  # no partial folder left
    listed = {p.relative_to(version).as_posix() for p in version.rglob("*") if p.is_file()}
    assert set(pointer["files"]) == listed - {MANIFEST_FILE}
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert pointer["files"][weights]["sha256"] == file_sha256(version / weights)
    assert json.loads((version / MANIFEST_FILE).read_text()) == pointer

    # Every loader resolves the pointer; the version folder itself loads too (diffusers' way in).
    assert check_model_dir(root) == version and check_model_dir(version) == version
    assert read_metadata(root)["sigma_n"] == 0.1
    assert load_components(root, text_encoders=False).unet is not None


def test_a_new_export_leaves_no_stale_files_and_keeps_only_the_previous_version(
    base_dir, lora_unet, tmp_path
):
    root = tmp_path / "model"
    first = export_pipeline(base_dir, lora_unet, root, {"run": 1})  # merged, with its lora/ beside it
    assert (first / "lora").is_dir()
    plain = load_components(base_dir, text_encoders=False).unet
    second = export_pipeline(base_dir, plain, root, {"run": 2}, overwrite=True)
    assert check_model_dir(root) == second and not (second / "lora").exists()
    assert read_metadata(root)["run"] == 2 and read_metadata(root)["has_lora"] is False
    assert first.is_dir()  # a server may still be loading it
    third = export_adapter(str(base_dir), lora_unet, root, {"run": 3}, overwrite=True)
    assert sorted(p.name for p in (root / VERSIONS_DIR).iterdir()) == sorted([second.name, third.name])
    assert sorted(p.name for p in third.iterdir()) == [MANIFEST_FILE, METADATA_FILE, "lora"]
    assert check_model_dir(root) == third


def test_a_crash_mid_export_leaves_the_previous_export_current(base_dir, lora_unet, tmp_path, monkeypatch):
    import ambient.models.export as export

    root = tmp_path / "model"
    first = export_adapter(str(base_dir), lora_unet, root, {"run": 1})
    before = (root / POINTER_FILE).read_bytes()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "save_lora", crash)  # after the UNet and the copied components
    with pytest.raises(RuntimeError, match="disk full"):
        export_pipeline(base_dir, lora_unet, root, {"run": 2}, overwrite=True)
    assert (root / POINTER_FILE).read_bytes() == before
    assert [p.name for p in (root / VERSIONS_DIR).iterdir()] == [first.name]
    assert check_model_dir(root) == first and read_metadata(root)["run"] == 1


def test_a_crash_mid_publish_leaves_the_destinations_previous_export_whole(
    base_dir, lora_unet, tmp_path, monkeypatch
):
    import ambient.models.export as export

    full = export_pipeline(base_dir, load_components(base_dir).unet, tmp_path / "full", {"run": 1})
    dest = str(tmp_path / "published")
    published = Path(publish_export(tmp_path / "full", dest))
    assert published.name == full.name and check_model_dir(dest) == published

    adapter = export_adapter(str(base_dir), lora_unet, tmp_path / "adapter", {"run": 2})
    real, calls = export.upload_file, []

    def failing(local, uri, storage=None):
        calls.append(uri)
        if len(calls) == 2:  # the adapter's two files: the crash comes after the first
            raise OSError("connection reset")
        real(local, uri, storage)

    monkeypatch.setattr(export, "upload_file", failing)
    with pytest.raises(OSError, match="connection reset"):
        publish_export(adapter.parent.parent, dest)
    assert (Path(dest) / VERSIONS_DIR / adapter.name).is_dir()  # the partial upload is there ...
    assert check_model_dir(dest) == published  # ... but the pointer still names the whole version
    assert read_metadata(dest)["run"] == 1
    assert load_components(dest, text_encoders=False).unet is not None

    monkeypatch.setattr(export, "upload_file", real)
    again = Path(publish_export(adapter, dest))  # a version folder publishes as itself
    assert check_model_dir(dest) == again and not (again / "unet").exists()
    assert read_metadata(dest)["run"] == 2


def test_an_export_without_its_pointer_is_refused_naming_the_path(base_dir, lora_unet, tmp_path):
    from ambient.models.source import check_model, resolve_model
    from ambient.serve.model import choose_model

    version = export_adapter(str(base_dir), lora_unet, tmp_path / "model", {"sigma_n": 0.2})
    unpublished = tmp_path / "in-place"  # what an older exporter, or a cut-off upload, leaves
    shutil.copytree(version, unpublished)
    (unpublished / MANIFEST_FILE).unlink()
    for load in (check_model_dir, load_components, check_model, resolve_model, choose_model):
        with pytest.raises(FileNotFoundError, match=rf"{unpublished} is an ambient export without CURRENT"):
            load(str(unpublished))
    assert read_metadata(unpublished)["sigma_n"] == 0.2  # its metadata stays readable

    # Published again (the user vouches it is whole), it loads.
    dest = tmp_path / "republished"
    publish_export(unpublished, str(dest))
    assert check_model_dir(dest).parent == dest / VERSIONS_DIR


def test_plain_folders_and_hand_written_metadata_need_no_pointer(base_dir, tmp_path):
    assert check_model_dir(base_dir) == base_dir
    folder = tmp_path / "hand"
    shutil.copytree(base_dir, folder)
    (folder / METADATA_FILE).write_text(json.dumps({"sigma_n": 0.3}))
    assert check_model_dir(folder) == folder


def test_a_pointer_to_a_damaged_version_is_refused_naming_the_file(base_dir, lora_unet, tmp_path):
    root = tmp_path / "model"
    version = export_adapter(str(base_dir), lora_unet, root, {})
    weights = version / "lora" / "pytorch_lora_weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-10])
    with pytest.raises(ValueError, match=r"pytorch_lora_weights.safetensors has \d+ bytes, not"):
        check_model_dir(root)
    weights.write_bytes(data[:-10] + b"x" * 10)  # same size, other content: only the hashes see it
    assert check_model_dir(root) == version
    with pytest.raises(ValueError, match="SHA-256"):
        resolve_export(root, hashes=True)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"lists lora/pytorch_lora_weights.safetensors, missing"):
        load_components(root)
    shutil.rmtree(version)
    with pytest.raises(FileNotFoundError, match=rf"names version {version.name}, but .* does not exist"):
        check_model_dir(root)


@pytest.mark.parametrize("version", ["../../etc", ".hidden", "", None])
def test_a_pointer_cannot_name_a_folder_outside_the_export(tmp_path, version):
    root = tmp_path / "model"
    root.mkdir()
    (root / POINTER_FILE).write_text(json.dumps({"version": version, "files": {"a": {"size": 1}}}))
    with pytest.raises(ValueError, match="names no valid version"):
        check_model_dir(root)
    (root / POINTER_FILE).write_text(json.dumps({"version": "v", "files": {"../x": {"size": 1}}}))
    with pytest.raises(ValueError, match="not a relative path"):
        check_model_dir(root)


def test_the_exported_unet_is_the_trained_one(base_dir, tmp_path):
    unet = load_components(base_dir, text_encoders=False).unet
    with torch.no_grad():
        unet.conv_out.bias.add_(0.25)
    export_pipeline(base_dir, unet, tmp_path / "model", {})
    loaded = load_components(tmp_path / "model", text_encoders=False).unet
    torch.testing.assert_close(loaded.conv_out.bias, unet.conv_out.bias)
