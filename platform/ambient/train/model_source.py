"""Model folders from a local path or an S3 prefix (downloaded once into a local cache)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from ambient.data.storage import StorageConfig, download_prefix, exists, is_s3, join
from ambient.models.loading import SDXLComponents, check_model_dir, load_components


def cache_root() -> Path:
    return Path(os.environ.get("AMBIENT_CACHE_DIR", Path.home() / ".cache" / "ambient"))


def resolve_model_dir(source: str, storage: StorageConfig | None = None) -> Path:
    """A local diffusers folder for ``source``; an s3:// prefix is downloaded into the cache first."""
    if not is_s3(source):
        return check_model_dir(source)
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    local = cache_root() / "s3-models" / key
    if not (local / "model_index.json").is_file():
        if not exists(join(source, "model_index.json"), storage):
            raise FileNotFoundError(f"{source} is not a diffusers folder: model_index.json is missing")
        tmp = local.with_name(f"{key}.partial-{os.getpid()}")
        download_prefix(source, tmp, storage)
        try:
            tmp.replace(local)
        except OSError:  # another worker on this node finished first; theirs is complete
            shutil.rmtree(tmp, ignore_errors=True)
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
