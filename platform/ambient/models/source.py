"""Which model folder a config means: the one resolution rule for every job.

``None`` is the default base model (``ensure_default_model``); an ``s3://`` prefix is downloaded once
into a local cache; anything else is a local diffusers folder, checked before use.

An S3 model is cached per endpoint, prefix and content: the cache folder's name includes a fingerprint of
the remote listing (paths, sizes, modification times), so a model re-exported to the same prefix is
downloaded again instead of served stale, and the older copy is removed. Pickled weights (``.bin``,
``.pt``, ...) are never downloaded: only ``.safetensors`` weights are loaded, and nothing from a model
path is ever unpickled.

``field`` names the config field that holds the reference (``model.path``, ``models[0].path``): a
missing or malformed model is then reported as that field's error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ambient.storage import StorageConfig, download_prefix, exists, file_infos, is_s3, join

from .base_model import ensure_default_model
from .loading import METADATA_FILE, SDXLComponents, check_model_dir, load_components
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
            if not (
                exists(join(ref, "model_index.json"), storage) or exists(join(ref, METADATA_FILE), storage)
            ):
                raise FileNotFoundError(
                    f"model {ref}: neither model_index.json nor {METADATA_FILE} (an adapter export) under that prefix"
                )
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
        files = _remote_files(ref, storage)
        if "model_index.json" not in files and METADATA_FILE not in files:
            raise FileNotFoundError(f"{ref} is not a diffusers folder: model_index.json is missing")
        return check_model_dir(_download(ref, storage, files))


def load_model_components(
    ref: str, storage: StorageConfig | None = None, *, text_encoders: bool = True
) -> tuple[SDXLComponents, Path]:
    """The model's components (without text encoders and tokenizers when ``text_encoders`` is False)."""
    folder = resolve_model(ref, storage)
    return load_components(folder, text_encoders=text_encoders), folder


def cached_model_dir(source: str, storage: StorageConfig | None = None) -> Path:
    """The cache folder of the model now at ``source`` (an s3:// prefix); it may not exist yet."""
    return _cache_dir(source, storage, _remote_files(source, storage))


def _remote_files(source: str, storage: StorageConfig | None) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime ns)} of the files under an s3:// prefix, pickled weights left out."""
    return {
        name: (int(info.size or 0), int(info.mtime_ns or 0))
        for name, info in file_infos(source, storage).items()
        if not name.endswith(PICKLE_SUFFIXES)
    }


def _cache_dir(source: str, storage: StorageConfig | None, files: dict[str, tuple[int, int]]) -> Path:
    endpoint = (storage or StorageConfig()).resolved().endpoint_url or "aws"
    where = hashlib.sha256(f"{endpoint}\n{source.rstrip('/')}".encode()).hexdigest()[:16]
    content = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:12]
    return default_cache_dir() / "s3-models" / f"{where}-{content}"


def _complete(local: Path) -> bool:
    """A cached model folder is complete once it exists (it is renamed into place whole): a diffusers
    folder has its model_index.json, an adapter export its metadata."""
    return (local / "model_index.json").is_file() or (local / METADATA_FILE).is_file()


def _download(source: str, storage: StorageConfig | None, files: dict[str, tuple[int, int]]) -> Path:
    """The cache folder holding ``files`` of ``source``, downloaded unless already complete."""
    local = _cache_dir(source, storage, files)
    if _complete(local):
        return local
    tmp = local.with_name(f"{local.name}.partial-{os.getpid()}")
    try:
        download_prefix(source, tmp, storage, files=sorted(files))
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
