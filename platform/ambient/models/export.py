"""Export a trained UNet as a complete diffusers SDXL folder (or a LoRA adapter), with the ambient
metadata beside it, published whole or not at all.

An export folder holds ``versions/<UTC time>-<random>/`` (each a diffusers folder, or ``lora/``, with
``ambient_metadata.json`` and its manifest ``ambient_export.json``) and ``CURRENT.json``, the pointer
to the current version, written last in one atomic step. Readers resolve the pointer
(``loading.resolve_export``); diffusers loads a version folder directly. Publishing keeps the version
it replaces (a server may be loading it) and removes older ones. One writer per export folder.
"""

from __future__ import annotations

import contextlib
import copy
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import UNet2DConditionModel
from torch import Tensor

from ambient.storage import (
    StorageConfig,
    join,
    list_dirs,
    read_text,
    remove_tree,
    upload_file,
    write_bytes_atomic,
)

from ..core import SamplingMode, default_sampling_mode
from .folders import (
    ADAPTER_EXPORT,
    COMPONENTS,
    EXPORT_FORMAT_KEY,
    LORA_DIR,
    MANIFEST_FILE,
    METADATA_FILE,
    PIPELINE_EXPORT,
    POINTER_FILE,
    VERSIONS_DIR,
    check_model_dir,
    file_sha256,
    read_listing,
    resolve_export,
)
from .lora import has_lora, lora_config, lora_state_dict, merge_lora, save_lora

EXPORT_FORMAT = 2  # 2: published versions (CURRENT.json); 1 was written in place


def _export_metadata(metadata: dict[str, Any], kind: str, has_lora_weights: bool) -> str:
    meta = {
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **metadata,
        EXPORT_FORMAT_KEY: EXPORT_FORMAT,
        "export_kind": kind,
        "has_lora": has_lora_weights,
    }
    try:
        return json.dumps(meta, indent=2, sort_keys=True) + "\n"
    except TypeError as e:
        raise ValueError(f"metadata must be JSON-serialisable: {e}") from e


@contextmanager
def _staged(out_dir: str | Path, overwrite: bool) -> Iterator[tuple[Path, Path]]:
    """(temporary folder to write, where it is published): a fresh version of the export at
    ``out_dir``, published when the block ends without error (removed otherwise, leaving the previous
    export as it was). An existing non-empty ``out_dir`` is refused unless ``overwrite``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"export target {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"export target {out} is not empty (pass overwrite=True to replace it)")
    version = new_version()
    versions = out / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    # A dot-name keeps a half-written version invisible to readers; a rename makes it whole.
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".partial", dir=versions))
    try:
        yield tmp, versions / version
        listing = _listing(tmp, version)
        (tmp / MANIFEST_FILE).write_text(json.dumps(listing, indent=2, sort_keys=True) + "\n")
        tmp.rename(versions / version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(str(out), listing, None)
    if overwrite:  # an unpublished export written in place before: its files are no export any more
        for entry in out.iterdir():
            if entry.name not in (POINTER_FILE, VERSIONS_DIR):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def new_version() -> str:
    """A version name that sorts by UTC time; the random part keeps two exports in a second apart."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"


def _listing(folder: Path, version: str) -> dict[str, Any]:
    """The manifest of a version folder: every file (the manifest itself aside), size and SHA-256."""
    files = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = file.relative_to(folder).as_posix()
        if name != MANIFEST_FILE:
            files[name] = {"size": file.stat().st_size, "sha256": file_sha256(file)}
    return {EXPORT_FORMAT_KEY: EXPORT_FORMAT, "version": version, "files": files}


def _publish(dest: str, listing: dict[str, Any], storage: StorageConfig | None) -> None:
    """Point ``dest`` at the version ``listing`` describes (one atomic write: os.replace locally, one
    PUT on S3), then remove every version but it and the one it replaces, which a reader may still be
    loading. Its files must all be in place already."""
    previous = None
    # A first export, or a damaged pointer, has no version to keep beside the new one.
    with contextlib.suppress(FileNotFoundError, ValueError):
        previous = read_listing(join(dest, POINTER_FILE), read_text(join(dest, POINTER_FILE), storage))
    text = json.dumps(listing, indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(join(dest, POINTER_FILE), text.encode(), storage)
    keep = {listing["version"]} | ({previous["version"]} if previous else set())
    for name in list_dirs(join(dest, VERSIONS_DIR), storage):
        if name not in keep:
            remove_tree(join(dest, VERSIONS_DIR, name), storage)


def publish_export(source: str | Path, dest: str, storage: StorageConfig | None = None) -> str:
    """Copy a local export to ``dest`` (a local folder or s3:// prefix) as a new version and publish it
    there; return the version's location. ``source`` is a published export, a version folder, or
    any other folder whose files you know are whole (it is then given a fresh manifest).

    The files go to ``<dest>/versions/<id>/`` one by one, the manifest after them, ``CURRENT.json``
    last: an upload cut off midway leaves ``dest``'s previous version current and whole."""
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"export source {folder} is not a folder")
    if (folder / POINTER_FILE).is_file() or (folder / MANIFEST_FILE).is_file():
        folder = resolve_export(folder, hashes=True)  # what is uploaded is what was published
    if (folder / MANIFEST_FILE).is_file():
        listing = read_listing(folder / MANIFEST_FILE)
    else:
        listing = _listing(folder, new_version())
    target = join(dest, VERSIONS_DIR, listing["version"])
    for name in sorted(listing["files"]):
        upload_file(folder / name, join(target, name), storage)
    manifest = json.dumps(listing, indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(join(target, MANIFEST_FILE), manifest.encode(), storage)
    _publish(dest, listing, storage)
    return target


def export_pipeline(
    base_model_dir: Path,
    unet: UNet2DConditionModel,
    out_dir: str | Path,
    metadata: dict[str, Any],
    lora_state: dict[str, Tensor] | None = None,
    *,
    lora_settings: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``out_dir``: the base folder's other components, the trained UNet, ``ambient_metadata.json``.

    ``unet`` is the trained UNet. If it still carries LoRA adapters, a merged copy is saved (the
    caller's UNet is left as it is) and its adapters go to ``lora/`` with their config (rank and
    alpha) unless ``lora_state`` (diffusers-format LoRA weights, e.g. from ``lora_state_dict``) is given;
    pass ``lora_state`` and ``lora_settings`` (``lora_config``) with an already merged UNet to ship
    both. The version folder then loads with from_pretrained as a full model, or the base plus
    ``load_lora_weights(<version>/lora)``.

    Published whole or not at all (see the module docstring): the files go to a fresh version of
    ``out_dir``, ``CURRENT.json`` names it last. An existing non-empty ``out_dir`` is refused unless
    ``overwrite``. Returns the version folder (what ``from_pretrained`` loads); ``out_dir`` is what
    this library's loaders take.
    """
    base = check_model_dir(base_model_dir)
    meta_text = _export_metadata(metadata, PIPELINE_EXPORT, lora_state is not None or has_lora(unet))
    if has_lora(unet):
        lora_state = lora_state if lora_state is not None else lora_state_dict(unet)
        lora_settings = lora_settings if lora_settings is not None else lora_config(unet)
        unet = merge_lora(copy.deepcopy(unet))
    if lora_state is not None and lora_settings is None:
        raise ValueError("lora_state needs lora_settings (the adapter's rank and alpha): see lora_config")

    with _staged(out_dir, overwrite) as (tmp, version):
        shutil.copy2(base / "model_index.json", tmp / "model_index.json")
        for name in COMPONENTS:
            if name != "unet":
                shutil.copytree(base / name, tmp / name)
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        if lora_state is not None:
            save_lora(tmp / LORA_DIR, lora_state, lora_settings)
        (tmp / METADATA_FILE).write_text(meta_text)
    return version


def export_adapter(
    base_model: str,
    unet: UNet2DConditionModel,
    out_dir: str | Path,
    metadata: dict[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``out_dir`` for a LoRA run without copying the base: ``lora/`` (diffusers-format weights
    with the adapter's rank and alpha) and ``ambient_metadata.json`` naming ``base_model`` (a local
    folder or s3:// prefix). ``load_components`` loads it as the base with the adapter folded in; in
    diffusers it is ``from_pretrained(base_model)`` then ``load_lora_weights(<version>/lora)``. Published and
    returned as ``export_pipeline``."""
    if not has_lora(unet):
        raise ValueError("export_adapter needs a UNet that carries LoRA adapters")
    meta_text = _export_metadata({**metadata, "base_model": str(base_model)}, ADAPTER_EXPORT, True)
    with _staged(out_dir, overwrite) as (tmp, version):
        save_lora(tmp / LORA_DIR, lora_state_dict(unet), lora_config(unet))
        (tmp / METADATA_FILE).write_text(meta_text)
    return version


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``ambient_metadata.json`` of an exported folder (a published export's current version)."""
    root = Path(path)
    file = (resolve_export(root) if (root / POINTER_FILE).is_file() else root) / METADATA_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{Path(path)} has no {METADATA_FILE} (not an ambient export?)")
    return json.loads(file.read_text())


@dataclass(frozen=True)
class ExportSampling:
    """How an export is sampled by default, from its metadata."""

    sigma_n: float
    trained_with_consistency: bool
    mode: SamplingMode


def sampling_defaults(metadata: dict[str, Any]) -> ExportSampling:
    """The export's recorded ``default_sampling_mode`` when it has one, else the rule applied to its
    ``sigma_n`` and ``trained_with_consistency``; no metadata at all is a clean model (full sampling)."""
    sigma_n = float(metadata.get("sigma_n") or 0.0)
    consistent = bool(metadata.get("trained_with_consistency", False))
    recorded = metadata.get("default_sampling_mode")
    if recorded is not None and recorded not in ("full", "early_stop"):
        raise ValueError(
            f"{METADATA_FILE}: default_sampling_mode must be full or early_stop, got {recorded!r}"
        )
    mode = recorded or default_sampling_mode(sigma_n, consistent)
    return ExportSampling(sigma_n=sigma_n, trained_with_consistency=consistent, mode=mode)
