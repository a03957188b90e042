"""Which model folder a config means: the one resolution rule, and the cache of s3:// models.

Jobs hold a model as an ``ambient.models.ref.ModelRef`` (checked on the driver, made local on a worker);
``check_model`` and ``resolve_model`` here are what it applies.

``None`` is the default base model (``ensure_default_model``); an ``s3://`` prefix is downloaded once
into a local cache; anything else is a local diffusers folder, checked before use.

An S3 model is cached per endpoint, prefix and content: the cache folder's name includes a fingerprint of
the remote listing (paths, sizes, modification times), so a model re-exported to the same prefix is
downloaded again instead of served stale, and the older copy is removed. Pickled weights (``.bin``,
``.pt``, ...) are never downloaded: only ``.safetensors`` weights are loaded, and nothing from a model
path is ever unpickled.

A trained export is resolved as ``folders.resolve_export`` says: an s3:// export's ``CURRENT.json`` is
read first and only the version it names is listed and downloaded (its files checked against the
pointer's sizes); an unpublished export is refused.

``field`` names the config field that holds the reference (``model.path``, ``models[0].path``): a
missing or malformed model is then reported as that field's error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ambient.storage import StorageConfig, download_prefix, file_infos, is_s3, join, read_text

from .base_model import ensure_default_model
from .folders import (
    ADAPTER_EXPORT,
    MANIFEST_FILE,
    METADATA_FILE,
    POINTER_FILE,
    VERSIONS_DIR,
    adapter_base,
    check_model_dir,
    read_listing,
    resolve_export,
    unpublished_error,
    written_by_exporter,
)
from .vae_pretrain import default_cache_dir

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


@contextmanager
def _naming(field: str | None) -> Iterator[None]:
    """Prefix a missing or malformed model's error with the config field that named it."""
    if field is None:
        yield
        return
    try:
        yield
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{field}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{field}: {err}") from None


def check_model(ref: str | None, storage: StorageConfig | None = None, field: str | None = None) -> str:
    """Fail fast, before any cluster work, when the model cannot be found; nothing is downloaded.

    Returns the reference to hand to workers: ``ref`` itself, or the default model's folder for None."""
    if ref is None:
        return str(ensure_default_model())
    with _naming(field):
        if is_s3(ref):
            _remote_model(ref, storage)
        else:
            check_model_dir(ref)
    return ref


def resolve_model(ref: str | None, storage: StorageConfig | None = None, field: str | None = None) -> Path:
    """A checked local diffusers folder for ``ref``; an s3:// prefix is downloaded into the cache first."""
    if ref is None:
        return ensure_default_model()
    with _naming(field):
        if not is_s3(ref):
            return check_model_dir(ref)
        prefix, files = _remote_model(ref, storage)
        return check_model_dir(_download(ref, storage, files, prefix))


def files_root(ref: str, storage: StorageConfig | None = None) -> str:
    """Where a model's component folders (``vae/``, ``unet/``, ``scheduler/`` ...) are, without
    downloading: a published export's current version, an adapter export's base, else ``ref`` itself.
    For reading a config file of a model given as written (local or ``s3://``)."""
    if not is_s3(ref):
        root = resolve_export(ref) if Path(ref).is_dir() else Path(ref)
        base = adapter_base(root) if root.is_dir() else None
        return files_root(base, storage) if base else str(root)
    try:
        pointer = read_text(join(ref, POINTER_FILE), storage)
    except FileNotFoundError:
        root = ref
    else:
        root = join(ref, VERSIONS_DIR, read_listing(join(ref, POINTER_FILE), pointer)["version"])
    try:
        meta = json.loads(read_text(join(root, METADATA_FILE), storage))
    except FileNotFoundError:
        return root
    base = meta.get("base_model") if meta.get("export_kind") == ADAPTER_EXPORT else None
    return files_root(str(base), storage) if base else root


def cached_model_dir(source: str, storage: StorageConfig | None = None) -> Path:
    """The cache folder of the model now at ``source`` (an s3:// prefix); it may not exist yet."""
    prefix, files = _remote_model(source, storage)
    return _cache_dir(source, storage, files, prefix)


def _remote_model(ref: str, storage: StorageConfig | None) -> tuple[str, dict[str, tuple[int, int]]]:
    """(prefix to download, its files) for the model at an s3:// ``ref``, by ``resolve_export``'s rule:
    a published export's current version, whose listed files must be there at their sizes; a version
    prefix, checked against its manifest; an unpublished export is refused; else ``ref`` itself."""
    try:  # the pointer first: the version it names was whole before it was written
        pointer = read_text(join(ref, POINTER_FILE), storage)
    except FileNotFoundError:
        pointer = None
    prefix = ref
    if pointer is not None:
        listing = read_listing(join(ref, POINTER_FILE), pointer)
        prefix = join(ref, VERSIONS_DIR, listing["version"])
    files = _remote_files(prefix, storage)
    if pointer is None and MANIFEST_FILE in files:
        listing = read_listing(join(ref, MANIFEST_FILE), read_text(join(ref, MANIFEST_FILE), storage))
    elif pointer is None:
        if METADATA_FILE in files and written_by_exporter(read_text(join(ref, METADATA_FILE), storage)):
            raise unpublished_error(ref)
        if "model_index.json" not in files and METADATA_FILE not in files:
            raise FileNotFoundError(
                f"{ref} is not a diffusers folder: model_index.json is missing (nor is there an export's "
                f"{POINTER_FILE} or {METADATA_FILE})"
            )
        return prefix, files
    for name, entry in sorted(listing["files"].items()):
        if name not in files:
            raise FileNotFoundError(
                f"export {ref}: {prefix} lacks {name}, which its listing names (re-export it)"
            )
        if files[name][0] != int(entry["size"]):
            raise ValueError(
                f"export {ref}: {join(prefix, name)} has {files[name][0]} bytes, not {entry['size']}"
            )
    return prefix, files


def _remote_files(source: str, storage: StorageConfig | None) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime ns)} of the files under an s3:// prefix, pickled weights left out."""
    return {
        name: (int(info.size or 0), int(info.mtime_ns or 0))
        for name, info in file_infos(source, storage).items()
        if not name.endswith(PICKLE_SUFFIXES)
    }


def _cache_dir(
    source: str, storage: StorageConfig | None, files: dict[str, tuple[int, int]], prefix: str
) -> Path:
    """Named by ``source`` (so a newer version replaces the older copy) and the content of ``prefix``."""
    endpoint = (storage or StorageConfig()).resolved().endpoint_url or "aws"
    where = hashlib.sha256(f"{endpoint}\n{source.rstrip('/')}".encode()).hexdigest()[:16]
    content = hashlib.sha256(repr((prefix.rstrip("/"), sorted(files.items()))).encode()).hexdigest()[:12]
    return default_cache_dir() / "s3-models" / f"{where}-{content}"


def _complete(local: Path) -> bool:
    """A cached model folder is complete once it exists (it is renamed into place whole): a diffusers
    folder has its model_index.json, an adapter export its metadata."""
    return (local / "model_index.json").is_file() or (local / METADATA_FILE).is_file()


def _download(
    source: str, storage: StorageConfig | None, files: dict[str, tuple[int, int]], prefix: str
) -> Path:
    """The cache folder holding ``files`` of ``prefix`` (``source`` or its current version), downloaded
    unless already complete."""
    local = _cache_dir(source, storage, files, prefix)
    if _complete(local):
        return local
    tmp = local.with_name(f"{local.name}.partial-{os.getpid()}")
    try:
        download_prefix(prefix, tmp, storage, files=sorted(files))
        tmp.replace(local)
    except OSError:
        if not _complete(local):
            raise
        # another worker on this node finished first; theirs is complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    where = local.name.split("-")[0]
    for old in local.parent.glob(f"{where}-*"):  # earlier versions of this prefix
        if old != local and ".partial-" not in old.name:
            shutil.rmtree(old, ignore_errors=True)
    return local
