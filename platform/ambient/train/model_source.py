"""Model folders from a local path or an S3 prefix (downloaded once into a local cache).

An S3 model is cached per endpoint, prefix and content: the cache folder's name includes a fingerprint of
the remote listing (paths, sizes, modification times), so a model re-exported to the same prefix is
downloaded again instead of served stale, and the older copy is removed. Pickled weights (``.bin``,
``.pt``, ...) are never downloaded: only ``.safetensors`` weights are loaded, and nothing from a model
path is ever unpickled.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from ambient.models.loading import SDXLComponents, check_model_dir, load_components
from ambient.storage import (
    StorageConfig,
    download_prefix,
    exists,
    file_infos,
    is_s3,
    join,
)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def cache_root() -> Path:
    return Path(os.environ.get("AMBIENT_CACHE_DIR", Path.home() / ".cache" / "ambient"))


def _remote_files(source: str, storage: StorageConfig | None) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime ns)} of the files under an s3:// prefix, pickled weights left out."""
    return {
        name: (int(info.size or 0), int(info.mtime_ns or 0))
        for name, info in file_infos(source, storage).items()
        if not name.endswith(PICKLE_SUFFIXES)
    }


def cached_model_dir(source: str, storage: StorageConfig | None = None) -> Path:
    """The cache folder of the model now at ``source`` (an s3:// prefix); it may not exist yet."""
    return _cache_dir(source, storage, _remote_files(source, storage))


def _cache_dir(source: str, storage: StorageConfig | None, files: dict[str, tuple[int, int]]) -> Path:
    endpoint = (storage or StorageConfig()).resolved().endpoint_url or "aws"
    where = hashlib.sha256(f"{endpoint}\n{source.rstrip('/')}".encode()).hexdigest()[:16]
    content = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:12]
    return cache_root() / "s3-models" / f"{where}-{content}"


def resolve_model_dir(source: str, storage: StorageConfig | None = None) -> Path:
    """A local diffusers folder for ``source``; an s3:// prefix is downloaded into the cache first."""
    if not is_s3(source):
        return check_model_dir(source)
    files = _remote_files(source, storage)
    if "model_index.json" not in files:
        raise FileNotFoundError(f"{source} is not a diffusers folder: model_index.json is missing")
    local = _cache_dir(source, storage, files)
    if not (local / "model_index.json").is_file():
        tmp = local.with_name(f"{local.name}.partial-{os.getpid()}")
        try:
            download_prefix(source, tmp, storage, files=sorted(files))
            tmp.replace(local)
        except OSError:
            if not (local / "model_index.json").is_file():
                raise
            # another worker on this node finished first; theirs is complete
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        where = local.name.split("-")[0]
        for old in local.parent.glob(f"{where}-*"):  # earlier versions of this prefix
            if old != local and ".partial-" not in old.name:
                shutil.rmtree(old, ignore_errors=True)
    return check_model_dir(local)


def check_model_source(source: str, storage: StorageConfig | None = None) -> None:
    """Fail fast, before any cluster work, when the model cannot be found."""
    if is_s3(source):
        if not exists(join(source, "model_index.json"), storage):
            raise FileNotFoundError(f"model {source}: model_index.json not found under that prefix")
    else:
        check_model_dir(source)


def load_model_components(source: str, storage: StorageConfig | None = None) -> tuple[SDXLComponents, Path]:
    folder = resolve_model_dir(source, storage)
    return load_components(folder), folder
