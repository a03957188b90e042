"""One preparation at a time per destination: a lock object beside the manifest.

``destination_lock(uri, storage, stale_after_s)`` creates ``<uri>/.prepare.lock`` only if it does not
exist (locally ``O_CREAT | O_EXCL``; on S3 a conditional PUT, ``If-None-Match: *``, which AWS S3, MinIO
and SeaweedFS honour with 412 when the object exists) and removes it when the block ends. A second
preparation of the same destination fails at once with ``DestinationLockedError`` naming the lock, its
owner and age. A lock older than ``stale_after_s`` (a crashed run) is removed and taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ambient.storage import StorageConfig, is_s3, join, resolve_filesystem, storage_error

from .errors import DataError

LOCK_NAME = ".prepare.lock"


class DestinationLockedError(DataError):
    """Another preparation holds the destination's lock."""


def _log(message: str) -> None:
    print(f"[ambient prepare] {message}", flush=True)


def _s3_client(storage: StorageConfig | None):
    import boto3
    from botocore.config import Config

    cfg = (storage or StorageConfig()).resolved()
    secret = cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None
    return boto3.client(
        "s3",
        endpoint_url=cfg.endpoint_url,
        region_name=cfg.region or "us-east-1",
        aws_access_key_id=cfg.access_key_id.get_secret_value() if cfg.access_key_id else None,
        aws_secret_access_key=secret,
        config=Config(
            connect_timeout=cfg.connect_timeout_s,
            read_timeout=cfg.request_timeout_s,
            retries={"max_attempts": cfg.max_attempts},
        ),
    )


def _bucket_key(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _create(uri: str, body: bytes, storage: StorageConfig | None) -> bool:
    """Create the lock object if absent; False when it already exists."""
    if is_s3(uri):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = _bucket_key(uri)
        try:
            _s3_client(storage).put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                return False
            raise storage_error(uri, "create the lock", exc, storage) from None
        except BotoCoreError as exc:
            raise storage_error(uri, "create the lock", exc, storage) from None
    _, path = resolve_filesystem(uri, storage)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(body)
    return True


def _read(uri: str, storage: StorageConfig | None) -> dict | None:
    """The lock's record, or None when it is gone (or unreadable: treated as just created)."""
    fs, path = resolve_filesystem(uri, storage)
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _delete(uri: str, storage: StorageConfig | None) -> None:
    fs, path = resolve_filesystem(uri, storage)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise storage_error(uri, "remove the lock", exc, storage) from None


def _record() -> dict:
    return {
        "owner": f"{socket.gethostname()}:{os.getpid()}",
        "created_at": time.time(),
        "token": uuid.uuid4().hex,
    }


def acquire(uri: str, storage: StorageConfig | None, stale_after_s: float) -> dict:
    """Take the destination's lock (taking over a stale one); DestinationLockedError when it is held."""
    target = join(uri, LOCK_NAME)
    record = _record()
    body = json.dumps(record).encode()
    if _create(target, body, storage):
        return record
    held = _read(target, storage)
    age = time.time() - float((held or {}).get("created_at") or time.time())
    if held is not None and age < stale_after_s:
        raise DestinationLockedError(
            f"destination.uri {uri} is being prepared by {held.get('owner', 'another run')} "
            f"(lock {target}, {age:.0f} s old): wait for it to finish, or remove the lock if that run is "
            f"gone (a lock older than destination.lock_stale_after_s = {stale_after_s:g} s is taken over)"
        )
    if held is not None:
        _log(f"taking over the stale lock {target} of {held.get('owner', '?')} ({age:.0f} s old)")
        _delete(target, storage)
    if not _create(target, body, storage):
        raise DestinationLockedError(f"destination.uri {uri}: another run took the lock {target} first")
    return record


def release(uri: str, storage: StorageConfig | None, record: dict) -> None:
    """Remove the lock if it is still ours (a run that took over a stale lock keeps its own)."""
    target = join(uri, LOCK_NAME)
    held = _read(target, storage)
    if held and held.get("token") == record["token"]:
        _delete(target, storage)


@contextmanager
def destination_lock(uri: str, storage: StorageConfig | None, stale_after_s: float) -> Iterator[None]:
    record = acquire(uri, storage, stale_after_s)
    try:
        yield
    finally:
        release(uri, storage, record)
