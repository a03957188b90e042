"""The reader's clear errors that need Ray or S3: a shard lost mid-stream, a corrupt shard, wrong
credentials, an unreachable endpoint; and bad shards skipped on request, counted, never silently. The
errors raised while a local dataset is inspected are in tests/unit/test_manifest_errors.py."""

from __future__ import annotations

import time

import pytest

from ambient.config import load_config
from ambient.data import (
    PrepareShardsConfig,
    ShardError,
    inspect_dataset,
    open_dataset,
    prepare_shards,
    stream_epochs,
)
from ambient.data.streaming import epoch_order
from ambient.storage import StorageError
from tests.helpers.datasets import ROWS, SHAPE, write_dataset

pytestmark = pytest.mark.integration


@pytest.fixture
def dataset(tmp_path) -> str:
    uri = str(tmp_path / "ds")
    write_dataset(uri)
    return uri


def test_valid_dataset_opens(ray_session, dataset):
    ds, info = open_dataset(dataset, expected_latent_shape=SHAPE)
    assert ds.count() == info.rows == 3 * ROWS


def test_a_shard_lost_after_validation_fails_the_stream_naming_it(ray_session, dataset, tmp_path):
    info = inspect_dataset(dataset)
    (tmp_path / "ds" / "shard-test-2.parquet").unlink()  # e.g. deleted while a run streams the data
    with pytest.raises(Exception, match=r"reading shard shard-test-2\.parquet"):
        stream_epochs(info, epochs=[0]).materialize()


def test_several_epochs_stream_every_row_once_per_epoch_in_each_epochs_order(ray_session, dataset):
    info = inspect_dataset(dataset)
    ds = stream_epochs(info, epochs=[0, 1, 2], shuffle_seed=5, min_task_bytes=1, window_rows=0)
    ds.context.execution_options.preserve_order = True
    ids = [r["id"] for r in ds.iter_rows()]
    expected = [
        f"{f.replace('shard-test-', 'row-').removesuffix('.parquet')}-{i}"
        for epoch in (0, 1, 2)
        for f in epoch_order(info.files, 5, epoch)
        for i in range(ROWS)
    ]
    assert ids == expected and len(ids) == 3 * 3 * ROWS
    # Grouped read tasks (every file in one task per epoch) keep the order too, and never span epochs.
    grouped = stream_epochs(info, epochs=[0, 1, 2], shuffle_seed=5, window_rows=0)
    grouped.context.execution_options.preserve_order = True
    assert [r["id"] for r in grouped.iter_rows()] == expected


def test_corrupt_shard_names_the_file_or_is_skipped_and_counted(ray_session, dataset, tmp_path):
    (tmp_path / "ds" / "shard-test-1.parquet").write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(ShardError, match=r"bad shard shard-test-1\.parquet .*(corrupt|unreadable)"):
        open_dataset(dataset)
    ds, info = open_dataset(dataset, skip_bad_shards=True)
    assert info.rows_skipped == ROWS and info.counts() == {
        "rows": 2 * ROWS,
        "rows_skipped": ROWS,
        "shards_skipped": 1,
    }
    assert info.bad_shards[0][0] == "shard-test-1.parquet" and "shard-test-1.parquet" not in info.files
    assert sorted(r["id"] for r in ds.iter_rows()) == sorted(
        f"row-{s}-{i}" for s in (0, 2) for i in range(ROWS)
    )


def test_s3_dataset_wrong_credentials_and_unreachable_endpoint(ray_session, seaweedfs):
    uri = f"s3://{seaweedfs.bucket}/errors/ds"
    write_dataset(uri, seaweedfs.storage())
    ds, info = open_dataset(uri, seaweedfs.storage())
    assert ds.count() == info.rows == 3 * ROWS

    wrong = seaweedfs.storage(secret_access_key="not-the-secret")
    with pytest.raises(StorageError, match="access denied: check the credentials") as err:
        open_dataset(uri, wrong)
    assert "not-the-secret" not in str(err.value) and seaweedfs.secret_access_key not in str(err.value)

    dead = seaweedfs.storage(endpoint_url="http://127.0.0.1:9", connect_timeout_s=1, max_attempts=1)
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"S3 endpoint unreachable.*127\.0\.0\.1:9"):
        open_dataset(uri, dead)
    assert time.monotonic() - start < 20


def test_prepare_fails_on_bad_destination_before_any_work(seaweedfs, tmp_path):
    def cfg(storage):
        c = load_config(
            PrepareShardsConfig,
            overrides=[f"destination.uri=s3://{seaweedfs.bucket}/x", "encode.space=image"],
        )
        return c.model_copy(update={"storage": storage})

    with pytest.raises(StorageError, match="access denied"):
        prepare_shards(cfg(seaweedfs.storage(secret_access_key="nope")))
    with pytest.raises(StorageError, match="unreachable"):
        prepare_shards(cfg(seaweedfs.storage(endpoint_url="http://127.0.0.1:9", max_attempts=1)))


def test_credentials_from_the_environment(ray_session, seaweedfs, monkeypatch):
    uri = f"s3://{seaweedfs.bucket}/errors/env"
    write_dataset(uri, seaweedfs.storage(), shards=1)
    for key, value in seaweedfs.env().items():
        monkeypatch.setenv(key, value)
    _, info = open_dataset(uri)  # no StorageConfig: everything from AWS_* variables
    assert info.rows == ROWS
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StorageError, match="access denied"):
        open_dataset(uri)
