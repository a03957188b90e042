"""One preparation at a time per destination: a renewed lease, the lock object ``<uri>/.prepare.lock``.

The lock object holds its owner (host:pid), a random token, when it was taken and last renewed, and
its lease duration. Every change to it is a compare-and-swap on the exact version last read or
written: on S3 a conditional PUT (``If-None-Match: *`` to create, ``If-Match: <ETag>`` to renew or take
over; AWS S3, MinIO and SeaweedFS answer 412 when the condition fails); locally the same under an
``flock`` of the destination folder, the version being the file's SHA-256. So of two runs that read
the same expired lock only one can replace it, and a run whose lock was replaced can no longer write
it: its next renewal, and the final conditional write before its commit, fail.

``destination_lease(uri, storage, lease_s, renew_s)`` takes the lock (refusing a live one with
``DestinationLockedError``, taking over one whose lease has run out), renews it from a background
thread every ``renew_s`` and releases it when the block ends. ``DestinationLease.confirm()`` is the
check before a commit. Before the first write to an S3 store a probe checks that it really honours
conditional writes; one that ignores them is refused (``ConditionalWritesUnsupportedError``).
Expiry compares the holder's clock (``renewed_at``) with the challenger's: hosts' clocks are assumed
to agree to well within a lease.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ambient.storage import (
    StorageConfig,
    StorageError,
    is_s3,
    join,
    resolve_filesystem,
    storage_error,
    write_bytes_atomic,
)

from .errors import DataError

LOCK_NAME = ".prepare.lock"


class DestinationLockedError(DataError):
    """Another preparation holds the destination's lock, or took it over from this run."""


class ConditionalWritesUnsupportedError(DataError):
    """The destination's store does not honour conditional writes, which the lock needs."""


def _log(message: str) -> None:
    print(f"[ambient prepare] {message}", flush=True)


@dataclass
class Held:
    """The lock object as read: its record, its version (ETag or SHA-256) and the store's mtime."""

    record: dict
    etag: str
    mtime: float


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


def _parse(body: bytes) -> dict:
    """The lock's record; an unreadable one is an empty record (its age then comes from its mtime)."""
    try:
        record = json.loads(body)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


# ConditionalRequestConflict (409): AWS S3's answer to a concurrent conditional write; the other won.
_LOST_RACE = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class S3LockStore:
    """The lock object on S3: every write is conditional, on absence or on the ETag read."""

    def __init__(self, target: str, storage: StorageConfig | None, client=None):
        self.target, self.storage = target, storage
        self.bucket, self.key = _bucket_key(target)
        self.client = client if client is not None else _s3_client(storage)
        self.conditional_delete = True  # set by probe(): some stores ignore If-Match on DELETE

    def _call(self, action: str, fn, **kwargs):
        """fn(**kwargs); None when its condition failed (412/409); other errors name the lock."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _LOST_RACE:
                return None
            raise storage_error(self.target, action, exc, self.storage) from None
        except BotoCoreError as exc:
            raise storage_error(self.target, action, exc, self.storage) from None

    def _put(self, body: bytes, key: str | None = None, **condition: str) -> str | None:
        out = self._call(
            "write the lock", self.client.put_object, Key=key or self.key, Body=body, **condition
        )
        return None if out is None else out["ETag"]

    def create(self, body: bytes) -> str | None:
        return self._put(body, IfNoneMatch="*")

    def replace(self, body: bytes, etag: str) -> str | None:
        return self._put(body, IfMatch=etag)

    def read(self) -> Held | None:
        from botocore.exceptions import ClientError

        try:
            out = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise storage_error(self.target, "read the lock", exc, self.storage) from None
        return Held(_parse(out["Body"].read()), out["ETag"], out["LastModified"].timestamp())

    def delete(self, etag: str) -> bool:
        """Delete the lock if still at ``etag``; False where the store cannot do that conditionally."""
        if not self.conditional_delete:
            return False
        self._call("remove the lock", self.client.delete_object, Key=self.key, IfMatch=etag)
        return True

    def probe(self) -> None:
        """Refuse a store that ignores conditional writes: each write below that must fail, must fail."""
        key = f"{self.key}.probe-{uuid.uuid4().hex[:12]}"
        try:
            first = self._probe_put(key, "If-None-Match: * on a new object", True, IfNoneMatch="*")
            self._probe_put(key, "If-None-Match: * on an existing object", False, IfNoneMatch="*")
            self._probe_put(key, "If-Match on another ETag", False, IfMatch='"0123456789abcdef"')
            second = self._probe_put(key, "If-Match on the current ETag", True, IfMatch=first)
            # A stale If-Match on DELETE must fail; where it does not, release leaves a released record.
            gone = self._call("probe", self.client.delete_object, Key=key, IfMatch=first)
            self.conditional_delete = gone is None
            if gone is None:
                self._call("probe", self.client.delete_object, Key=key, IfMatch=second)
        except StorageError as exc:
            raise self._unsupported(f"it rejects conditional writes ({exc})") from None
        finally:
            self._call("remove the probe", self.client.delete_object, Key=key)

    def _probe_put(self, key: str, what: str, must_succeed: bool, **condition: str) -> str:
        etag = self._put(uuid.uuid4().hex.encode(), key=key, **condition)
        if must_succeed and etag is None:
            raise self._unsupported(f"a PUT with {what} failed")
        if not must_succeed and etag is not None:
            raise self._unsupported(f"it ignores {what} (a PUT that must fail with 412 succeeded)")
        return etag or ""

    def _unsupported(self, why: str) -> ConditionalWritesUnsupportedError:
        where = (self.storage or StorageConfig()).describe()
        return ConditionalWritesUnsupportedError(
            f"destination store s3://{self.bucket} ({where}) does not honour conditional writes: {why}. "
            f"The preparation lock {self.target} needs them (If-None-Match and If-Match on PUT, as AWS "
            "S3, MinIO and SeaweedFS do): prepare to a store that honours them"
        )


class LocalLockStore:
    """The lock file in a local folder: compare-and-swap under an exclusive flock of the folder."""

    def __init__(self, target: str, storage: StorageConfig | None = None):
        self.target = target
        self.path = Path(resolve_filesystem(target, storage)[1])

    @contextmanager
    def _guard(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _current(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, body: bytes) -> str:
        write_bytes_atomic(str(self.path), body)  # readers never see a half-written lock
        return hashlib.sha256(body).hexdigest()

    def create(self, body: bytes) -> str | None:
        with self._guard():
            return None if self._current() is not None else self._write(body)

    def replace(self, body: bytes, etag: str) -> str | None:
        with self._guard():
            now = self._current()
            if now is None or hashlib.sha256(now).hexdigest() != etag:
                return None
            return self._write(body)

    def read(self) -> Held | None:
        with self._guard():
            body = self._current()
            if body is None:
                return None
            return Held(_parse(body), hashlib.sha256(body).hexdigest(), self.path.stat().st_mtime)

    def delete(self, etag: str) -> bool:
        with self._guard():
            now = self._current()
            if now is not None and hashlib.sha256(now).hexdigest() == etag:
                self.path.unlink()
        return True

    def probe(self) -> None:
        """flock and rename are local primitives: nothing to check."""


def lock_store(uri: str, storage: StorageConfig | None) -> S3LockStore | LocalLockStore:
    """The store of ``<uri>/.prepare.lock``; an S3 one is probed for conditional writes first."""
    target = join(uri, LOCK_NAME)
    store = S3LockStore(target, storage) if is_s3(uri) else LocalLockStore(target, storage)
    store.probe()
    return store


def _record(lease_s: float) -> dict:
    now = time.time()
    return {
        "owner": f"{socket.gethostname()}:{os.getpid()}",
        "token": uuid.uuid4().hex,
        "acquired_at": now,
        "renewed_at": now,
        "lease_s": lease_s,
        "renewals": 0,
    }


def _body(record: dict) -> bytes:
    return json.dumps(record).encode()


def _expires_in(held: Held, lease_s: float) -> tuple[float, float]:
    """(seconds since the holder last renewed, seconds until its lease runs out; <= 0: expired). A
    record without times (an older or unreadable lock) counts from its store mtime and ``lease_s``."""
    if held.record.get("released"):
        return 0.0, 0.0
    renewed = float(held.record.get("renewed_at") or held.record.get("created_at") or held.mtime)
    lease = float(held.record.get("lease_s") or lease_s)
    age = time.time() - renewed
    return age, lease - age


def _holder(held: Held | None) -> str:
    if held is None:
        return "nobody (the lock is gone)"
    return str(held.record.get("owner", "an unknown run"))


class DestinationLease:
    """A held lock: renewed by a background thread, confirmed before the commit, released at the end."""

    def __init__(self, uri: str, store, record: dict, etag: str, acquired_mtime: float, renew_s: float):
        self.uri, self.store, self.record, self.etag = uri, store, record, etag
        self.target = store.target
        self.acquired_mtime = acquired_mtime  # the store's clock: comparable with shard mtimes
        self.renew_s = renew_s
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_ok = time.monotonic()
        self._lost: str | None = None

    def start_renewal(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="ambient-lock-lease", daemon=True)
        self._thread.start()

    def stop_renewal(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_s):
            self.renew()

    def renew(self) -> None:
        """One conditional replace on the version this run last wrote; a failure marks the lease lost."""
        with self._mutex:
            if self._lost is not None:
                return
            record = dict(self.record, renewed_at=time.time(), renewals=self.record["renewals"] + 1)
            try:
                etag = self.store.replace(_body(record), self.etag)
            except StorageError as exc:
                waited = time.monotonic() - self._last_ok
                if waited > self.record["lease_s"]:  # past its lease another run may have taken it
                    self._lost = f"could not renew it for {waited:.1f} s, longer than its lease ({exc})"
                return
            if etag is None:
                self._lost = f"it was taken over by {_holder(self.store.read())}"
                return
            self.record, self.etag, self._last_ok = record, etag, time.monotonic()

    def check(self) -> None:
        """DestinationLockedError, naming the lock, once the lease is lost."""
        if self._lost is not None:
            raise DestinationLockedError(
                f"destination.uri {self.uri}: lost the lock {self.target}: {self._lost}; this run stops "
                "without committing its manifest"
            )

    def confirm(self) -> None:
        """The check before a commit: a final conditional write, which also extends the lease."""
        self.renew()
        self.check()

    def release(self) -> None:
        """Stop renewing and remove the lock if this run still holds it."""
        self.stop_renewal()
        with self._mutex:
            if self._lost is not None:
                return
            self._lost = "it was released"
            _remove(self.store, self.record, self.etag)


def _remove(store, record: dict, etag: str) -> None:
    """Delete the lock at ``etag``; where the store cannot delete conditionally, mark it released (a
    record any run may take over at once) by a conditional replace instead."""
    if not store.delete(etag):
        store.replace(_body(dict(record, released=True)), etag)


def _refuse(uri: str, target: str, held: Held, lease_s: float) -> DestinationLockedError:
    age, left = _expires_in(held, lease_s)
    return DestinationLockedError(
        f"destination.uri {uri} is being prepared by {_holder(held)}: its lock {target} is held (lease "
        f"renewed {age:.1f} s ago, expires in {left:.1f} s); wait for that run, or for its lease to run "
        "out if it is gone (destination.lock_lease_s)"
    )


def _take_over(uri: str, store, body: bytes, lease_s: float) -> str:
    """Replace the exact lock object read, if its lease has run out; the ETag written."""
    held = store.read()
    if held is None:  # released between our create and this read
        etag = store.create(body)
    else:
        age, left = _expires_in(held, lease_s)
        if left > 0:
            raise _refuse(uri, store.target, held, lease_s)
        if not held.record.get("released"):
            _log(f"taking over the expired lock {store.target} of {_holder(held)} (renewed {age:.0f} s ago)")
        etag = store.replace(body, held.etag)
    if etag is None:
        raise DestinationLockedError(f"destination.uri {uri}: another run took the lock {store.target} first")
    return etag


def acquire_lease(
    uri: str, storage: StorageConfig | None, lease_s: float, renew_s: float
) -> DestinationLease:
    """Take the destination's lock (taking over an expired one); DestinationLockedError when it is held.
    The lease is not renewed until ``start_renewal()``."""
    store = lock_store(uri, storage)
    record = _record(lease_s)
    body = _body(record)
    etag = store.create(body) or _take_over(uri, store, body, lease_s)
    mine = store.read()
    if mine is None or mine.etag != etag:
        raise DestinationLockedError(f"destination.uri {uri}: another run took the lock {store.target} first")
    return DestinationLease(uri, store, record, etag, mine.mtime, renew_s)


@contextmanager
def destination_lease(
    uri: str, storage: StorageConfig | None, lease_s: float, renew_s: float
) -> Iterator[DestinationLease]:
    lease = acquire_lease(uri, storage, lease_s, renew_s)
    lease.start_renewal()
    try:
        yield lease
    finally:
        lease.release()


def acquire(uri: str, storage: StorageConfig | None, lease_s: float) -> dict:
    """Take the lock without renewing it (a holder that does not renew): its record."""
    return acquire_lease(uri, storage, lease_s, renew_s=lease_s).record


def release(uri: str, storage: StorageConfig | None, record: dict) -> None:
    """Remove the lock if it still holds ``record`` (a run that took it over keeps its own)."""
    store = lock_store(uri, storage)
    held = store.read()
    if held is not None and held.record.get("token") == record["token"]:
        _remove(store, held.record, held.etag)
