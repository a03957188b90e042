"""The destination lock as a lease, on a local folder: renewed while held, taken over only by a
compare-and-swap of the exact version read, lost leases refuse the commit, and a store that ignores
conditional writes is refused. No Ray, no S3 server (the S3 store's probe runs against a fake client)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from ambient.data.lock import (
    LOCK_NAME,
    ConditionalWritesUnsupportedError,
    DestinationLockedError,
    S3LockStore,
    acquire,
    acquire_lease,
    destination_lease,
    release,
)
from ambient.data.writer import is_run_file, new_run_id, remove_stale_shards, shard_name


def lock_record(uri: str) -> dict:
    with open(os.path.join(uri, LOCK_NAME)) as f:
        return json.load(f)


def test_a_held_lease_is_renewed_and_refuses_a_second_run(tmp_path):
    uri = str(tmp_path / "ds")
    with destination_lease(uri, None, lease_s=1.0, renew_s=0.1) as lease:
        time.sleep(1.5)  # longer than the lease: only renewal keeps it
        assert lock_record(uri)["renewals"] >= 5
        with pytest.raises(
            DestinationLockedError,
            match=rf"being prepared by .*:\d+: its lock {uri}/{LOCK_NAME} is held \(lease",
        ):
            acquire(uri, None, lease_s=1.0)
        lease.confirm()
    assert not (tmp_path / "ds" / LOCK_NAME).exists()


def test_an_expired_lease_is_taken_over_and_its_holder_cannot_commit(tmp_path):
    uri = str(tmp_path / "ds")
    first = acquire_lease(uri, None, lease_s=1.0, renew_s=0.2)  # never renewed: a stalled run
    time.sleep(1.1)
    second = acquire_lease(uri, None, lease_s=1.0, renew_s=0.2)
    assert lock_record(uri)["token"] == second.record["token"]
    with pytest.raises(DestinationLockedError, match=rf"lost the lock {uri}/{LOCK_NAME}: it was taken over"):
        first.confirm()
    first.release()  # not the holder: the lock stays
    assert lock_record(uri)["token"] == second.record["token"]
    second.confirm()
    second.release()
    assert not (tmp_path / "ds" / LOCK_NAME).exists()


def test_of_many_runs_taking_over_an_expired_lock_exactly_one_wins(tmp_path):
    uri = str(tmp_path / "ds")
    acquire(uri, None, lease_s=1.0)
    time.sleep(1.1)
    won, refused = [], []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait()
        try:
            won.append(acquire(uri, None, lease_s=60))
        except DestinationLockedError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    assert lock_record(uri)["token"] == won[0]["token"]
    assert all(LOCK_NAME in message for message in refused)


def test_release_of_a_record_that_is_not_the_holder_keeps_the_lock(tmp_path):
    uri = str(tmp_path / "ds")
    mine = acquire(uri, None, lease_s=60)
    release(uri, None, {"token": "someone-else"})
    assert lock_record(uri)["token"] == mine["token"]
    release(uri, None, mine)
    assert not (tmp_path / "ds" / LOCK_NAME).exists()


def test_cleanup_keeps_files_written_after_the_lock_by_another_run(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    run_id = new_run_id()
    old, mine, later = shard_name(new_run_id()), shard_name(run_id), shard_name(new_run_id())
    for name in (old, mine):
        (folder / name).write_bytes(b"x")
    lock_mtime = time.time()
    (folder / later).write_bytes(b"x")
    os.utime(folder / mine, (lock_mtime + 5, lock_mtime + 5))  # this run's own file, written later
    os.utime(folder / later, (lock_mtime + 5, lock_mtime + 5))
    assert all(is_run_file(n) for n in (old, mine, later))
    removed = remove_stale_shards(str(folder), set(), None, run_id=run_id, lock_mtime=lock_mtime)
    assert removed.removed_files == 2 and sorted(os.listdir(folder)) == [later]


class IgnoringClient:
    """An S3 client whose store accepts every PUT, conditions or not (a store that ignores them)."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}

    def put_object(self, Bucket, Key, Body, **condition):  # noqa: N803 (boto3's names)
        self.objects[Key] = Body
        return {"ETag": f'"{len(self.objects)}"'}

    def delete_object(self, Bucket, Key, **condition):  # noqa: N803
        self.objects.pop(Key, None)
        return {}


def test_a_store_that_ignores_conditional_writes_is_refused():
    client = IgnoringClient()
    store = S3LockStore(f"s3://bucket/ds/{LOCK_NAME}", None, client=client)
    with pytest.raises(
        ConditionalWritesUnsupportedError,
        match=rf"store s3://bucket .* ignores If-None-Match.*lock s3://bucket/ds/{LOCK_NAME}",
    ):
        store.probe()
    assert client.objects == {}  # the probe object is removed
