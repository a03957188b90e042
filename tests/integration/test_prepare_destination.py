"""prepare_shards and its destination: an existing dataset is refused unless destination.overwrite, two
preparations never run at once (a lock object, local and SeaweedFS S3, stale locks taken over), and the
summary is written only after the manifest commit."""

from __future__ import annotations

import json
import time

import pytest

from ambient.config import load_config
from ambient.data import PrepareShardsConfig, prepare_shards
from ambient.data.lock import LOCK_NAME, DestinationLockedError, acquire, release
from ambient.data.prepare import DestinationExistsError
from ambient.storage import StorageError, exists, join, list_files, read_text, write_bytes_atomic

pytestmark = pytest.mark.integration


def config(uri: str, storage, *extra: str) -> PrepareShardsConfig:
    overrides = [
        f"destination.uri={uri}",
        "encode.space=image",  # no VAE: these tests are about the destination
        "resolution=16",
        "source.count=8",
        "rows_per_shard=4",
        *extra,
    ]
    cfg = load_config(PrepareShardsConfig, overrides=overrides)
    return cfg.model_copy(update={"storage": storage}) if storage else cfg


@pytest.fixture(params=["local", "s3"])
def destination(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "ds"), None
    s3 = request.getfixturevalue("seaweedfs")
    return f"s3://{s3.bucket}/destination/{tmp_path.name}/ds", s3.storage()


def test_existing_dataset_is_refused_unless_overwrite(ray_session, destination):
    uri, storage = destination
    first = prepare_shards(config(uri, storage))
    files = list_files(uri, storage)
    summary = read_text(join(uri, "summary.json"), storage)
    with pytest.raises(
        DestinationExistsError, match=r"destination.uri .* already holds a dataset.*overwrite"
    ):
        prepare_shards(config(uri, storage, "source.seed=1"))
    assert list_files(uri, storage) == files  # nothing written, nothing deleted
    assert read_text(join(uri, "summary.json"), storage) == summary
    second = prepare_shards(config(uri, storage, "source.seed=1", "destination.overwrite=true"))
    assert second.manifest.dataset_id != first.manifest.dataset_id
    assert (
        json.loads(read_text(join(uri, "summary.json"), storage))["dataset_id"] == second.manifest.dataset_id
    )
    assert not exists(join(uri, LOCK_NAME), storage)  # released


def test_summary_is_written_only_after_the_manifest_commit(ray_session, tmp_path):
    uri = tmp_path / "ds"
    (uri / "manifest.json").mkdir(parents=True)  # the commit (a rename onto it) fails
    with pytest.raises(StorageError, match="manifest.json"):
        prepare_shards(config(str(uri), None, "destination.overwrite=true"))
    assert not (uri / "summary.json").exists()
    assert not (uri / LOCK_NAME).exists()  # released on failure too


def test_lock_refuses_a_second_preparation_and_takes_over_a_stale_one(destination):
    uri, storage = destination
    held = acquire(uri, storage, lease_s=3600)
    with pytest.raises(DestinationLockedError, match=r"destination.uri .* is being prepared by .*:\d+"):
        acquire(uri, storage, lease_s=3600)
    with pytest.raises(DestinationLockedError):  # the job itself, before any Ray work
        prepare_shards(config(uri, storage))
    release(uri, storage, held)
    assert not exists(join(uri, LOCK_NAME), storage)
    stale = {"owner": "gone-host:1", "created_at": time.time() - 7200, "token": "old"}
    write_bytes_atomic(join(uri, LOCK_NAME), json.dumps(stale).encode(), storage)
    with pytest.raises(DestinationLockedError):
        acquire(uri, storage, lease_s=3 * 3600)  # 2 h old is not stale under a 3 h limit
    mine = acquire(uri, storage, lease_s=3600)  # under a 1 h limit it is: taken over
    assert json.loads(read_text(join(uri, LOCK_NAME), storage))["token"] == mine["token"]
    release(uri, storage, stale)  # not the holder: the lock stays
    assert exists(join(uri, LOCK_NAME), storage)
    release(uri, storage, mine)
    assert not exists(join(uri, LOCK_NAME), storage)
