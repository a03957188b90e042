"""Storage for datasets, checkpoints and models: a local folder or ``s3://bucket/prefix``.

Data goes through pyarrow's filesystems (S3FileSystem for S3, with an endpoint override for MinIO,
SeaweedFS and friends). Endpoint, region and credentials come from the config when given, else from
the standard AWS variables. Secrets stay SecretStr and never reach a log or a summary.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs
from pydantic import SecretStr

from ambient.config import Section


class StorageError(Exception):
    """A storage location cannot be reached or read (endpoint, credentials, missing object)."""


class StorageConfig(Section):
    """S3 connection settings; each unset field falls back to the standard AWS environment variable."""

    endpoint_url: str | None = None  # AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL; None = AWS itself
    region: str | None = None  # AWS_REGION / AWS_DEFAULT_REGION
    access_key_id: SecretStr | None = None  # AWS_ACCESS_KEY_ID
    secret_access_key: SecretStr | None = None  # AWS_SECRET_ACCESS_KEY
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 60.0
    max_attempts: int = 3  # so that an unreachable endpoint fails in seconds, not minutes

    def resolved(self) -> StorageConfig:
        """A copy with the environment fallbacks filled in (do this on the driver: Ray workers may
        not share the driver's environment)."""

        def env(*names: str) -> str | None:
            return next((os.environ[n] for n in names if os.environ.get(n)), None)

        def secret(value: SecretStr | None, name: str) -> SecretStr | None:
            if value is not None and value.get_secret_value():
                return value
            raw = env(name)
            return SecretStr(raw) if raw else None

        return self.model_copy(
            update={
                "endpoint_url": self.endpoint_url or env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
                "region": self.region or env("AWS_REGION", "AWS_DEFAULT_REGION"),
                "access_key_id": secret(self.access_key_id, "AWS_ACCESS_KEY_ID"),
                "secret_access_key": secret(self.secret_access_key, "AWS_SECRET_ACCESS_KEY"),
            }
        )

    def describe(self) -> str:
        """Where, without secrets: for error messages."""
        r = self.resolved()
        return f"endpoint {r.endpoint_url or 'AWS default'}, region {r.region or 'default'}"


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI."""
    out = str(uri).rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def s3_filesystem(storage: StorageConfig | None, allow_bucket_creation: bool = False) -> pafs.S3FileSystem:
    cfg = (storage or StorageConfig()).resolved()
    kwargs: dict = {
        "allow_bucket_creation": allow_bucket_creation,
        "connect_timeout": cfg.connect_timeout_s,
        "request_timeout": cfg.request_timeout_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=cfg.max_attempts),
    }
    if cfg.endpoint_url:
        parsed = urlparse(cfg.endpoint_url if "://" in cfg.endpoint_url else f"https://{cfg.endpoint_url}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
    if cfg.region:
        kwargs["region"] = cfg.region
    if cfg.access_key_id is not None and cfg.secret_access_key is not None:
        kwargs["access_key"] = cfg.access_key_id.get_secret_value()
        kwargs["secret_key"] = cfg.secret_access_key.get_secret_value()
    return pafs.S3FileSystem(**kwargs)


def resolve_filesystem(
    uri: str | os.PathLike, storage: StorageConfig | None = None
) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an ``s3://bucket/prefix`` URI."""
    text = str(uri)
    if is_s3(text):
        path = text[len("s3://") :].strip("/")
        if not path:
            raise StorageError(f"{text!r} names no bucket")
        return s3_filesystem(storage), path
    if "://" in text and not text.startswith("file://"):
        raise StorageError(f"unsupported storage URI {text!r}: use a local path or s3://bucket/prefix")
    return pafs.LocalFileSystem(), str(Path(text.removeprefix("file://")).expanduser().absolute())


def storage_error(uri: str, action: str, exc: Exception, storage: StorageConfig | None) -> StorageError:
    """Turn pyarrow's OSError into a message that says what to check."""
    text = str(exc)
    hint = ""
    if is_s3(uri):
        where = (storage or StorageConfig()).describe()
        denied = (
            "ACCESS_DENIED",
            "SIGNATURE_DOES_NOT_MATCH",
            "INVALID_ACCESS_KEY_ID",
            "SignatureDoesNotMatch",
        )
        if any(marker in text for marker in denied):
            hint = (
                f" (access denied: check the credentials, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; {where})"
            )
        elif "NETWORK_CONNECTION" in text or "curlCode" in text or "Could not connect" in text:
            hint = f" (S3 endpoint unreachable: check AWS_ENDPOINT_URL / storage.endpoint_url; {where})"
        else:
            hint = f" ({where})"
    return StorageError(f"cannot {action} {uri}: {text}{hint}")


def exists(uri: str, storage: StorageConfig | None = None) -> bool:
    fs, path = resolve_filesystem(uri, storage)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise storage_error(uri, "check", exc, storage) from None


def read_bytes(uri: str, storage: StorageConfig | None = None) -> bytes:
    fs, path = resolve_filesystem(uri, storage)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(uri)
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise storage_error(uri, "read", exc, storage) from None


def read_text(uri: str, storage: StorageConfig | None = None) -> str:
    """The object's text; FileNotFoundError when it does not exist, StorageError when unreachable."""
    return read_bytes(uri, storage).decode("utf-8")


def write_bytes_atomic(uri: str, data: bytes, storage: StorageConfig | None = None) -> None:
    """Write a whole object at once: temp file + rename locally, one PUT on S3 (S3 objects appear
    only when complete), so a reader never sees a half-written file."""
    fs, path = resolve_filesystem(uri, storage)
    try:
        if is_s3(uri):
            with fs.open_output_stream(path) as f:
                f.write(data)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise storage_error(uri, "write", exc, storage) from None


@contextmanager
def local_folder_atomic(final: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``final`` to fill; renamed to ``final`` when the block ends without
    error (an existing ``final`` is moved aside first and removed after), removed otherwise. Readers
    never see ``final`` half-written; while an existing one is swapped out it is briefly absent. The
    folder counterpart of ``write_bytes_atomic``, for local folders (caches, packaged models)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # A dot-name beside the target: the same filesystem, so the rename is atomic, and hidden from globs.
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            stale = final.with_name(f".{final.name}.stale-{time.time_ns()}")
            final.rename(stale)
            tmp.rename(final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_dir(uri: str, storage: StorageConfig | None = None) -> None:
    """Create a local folder (S3 needs none); fails early when S3 is unreachable or denies access."""
    fs, path = resolve_filesystem(uri, storage)
    try:
        if is_s3(uri):
            fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
        else:
            fs.create_dir(path, recursive=True)
    except OSError as exc:
        raise storage_error(uri, "access", exc, storage) from None


def file_infos(uri: str, storage: StorageConfig | None = None) -> dict[str, pafs.FileInfo]:
    """{relative path: FileInfo} of all files under a prefix (recursive)."""
    fs, path = resolve_filesystem(uri, storage)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True))
    except OSError as exc:
        raise storage_error(uri, "list", exc, storage) from None
    root = path.rstrip("/") + "/"
    return {i.path[len(root) :]: i for i in infos if i.type == pafs.FileType.File}


def list_files(uri: str, storage: StorageConfig | None = None, suffix: str = "") -> list[str]:
    """Relative paths of all files under a prefix (recursive), sorted."""
    return sorted(p for p in file_infos(uri, storage) if p.endswith(suffix))


def download_prefix(
    uri: str,
    local_dir: str | os.PathLike,
    storage: StorageConfig | None = None,
    files: Sequence[str] | None = None,
) -> Path:
    """Copy every file under ``uri`` into ``local_dir`` (a local ``uri`` is copied too), or only
    ``files`` (paths relative to ``uri``) when given; returns ``local_dir``."""
    fs, path = resolve_filesystem(uri, storage)
    dest = Path(local_dir)
    dest.mkdir(parents=True, exist_ok=True)
    local = pafs.LocalFileSystem()
    try:
        if files is None:
            if fs.get_file_info(path).type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"{uri} does not exist")
            pafs.copy_files(path, str(dest.absolute()), source_filesystem=fs, destination_filesystem=local)
        for name in files or ():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(
                f"{path.rstrip('/')}/{name}",
                str((dest / name).absolute()),
                source_filesystem=fs,
                destination_filesystem=local,
            )
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise storage_error(uri, "download", exc, storage) from None
    return dest


def upload_directory(local_dir: str | os.PathLike, uri: str, storage: StorageConfig | None = None) -> None:
    """Copy a local folder's files under ``uri`` (local or S3), keeping relative paths."""
    src = Path(local_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder")
    fs, path = resolve_filesystem(uri, storage)
    try:
        if not is_s3(uri):
            fs.create_dir(path, recursive=True)
        pafs.copy_files(
            str(src.absolute()), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
        )
    except OSError as exc:
        raise storage_error(uri, "upload to", exc, storage) from None


def upload_file(local_file: str | os.PathLike, uri: str, storage: StorageConfig | None = None) -> None:
    """Copy one local file to ``uri`` (local or S3). On S3 the object appears only when complete."""
    fs, path = resolve_filesystem(uri, storage)
    try:
        if not is_s3(uri):
            fs.create_dir(str(Path(path).parent), recursive=True)
        pafs.copy_files(
            str(Path(local_file).absolute()),
            path,
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=fs,
        )
    except OSError as exc:
        raise storage_error(uri, "upload to", exc, storage) from None


def list_dirs(uri: str, storage: StorageConfig | None = None) -> list[str]:
    """Names of the folders (S3: common prefixes) directly under ``uri``, sorted; none when absent."""
    fs, path = resolve_filesystem(uri, storage)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    except OSError as exc:
        raise storage_error(uri, "list", exc, storage) from None
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def remove_tree(uri: str, storage: StorageConfig | None = None) -> None:
    """Delete a folder or prefix and everything under it; a missing one is no error."""
    fs, path = resolve_filesystem(uri, storage)
    try:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir(path)
    except OSError as exc:
        raise storage_error(uri, "delete", exc, storage) from None
