"""The reader's clear errors: corrupt shard, wrong schema version, missing/incomplete manifest, wrong
credentials, unreachable endpoint; and bad shards skipped on request, counted, never silently."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from ambient.config import load_config
from ambient.data import (
    DataError,
    ManifestError,
    PrepareShardsConfig,
    ShardError,
    inspect_dataset,
    open_dataset,
    prepare_shards,
    stream_epochs,
)
from ambient.data.schema import (
    SCHEMA_VERSION,
    Manifest,
    NoiseInfo,
    ShardEntry,
    SigmaStats,
    make_table,
    utc_now,
)
from ambient.data.streaming import epoch_order
from ambient.data.writer import write_manifest
from ambient.storage import StorageError, read_text, resolve_filesystem, write_bytes_atomic

pytestmark = pytest.mark.integration

SHAPE = (4, 8, 8)
ROWS = 6


def write_dataset(uri: str, storage=None, shards: int = 3, sigma: float = 0.3) -> Manifest:
    """A small valid dataset written directly with the schema helpers (no pipeline, no VAE)."""
    fs, root = resolve_filesystem(uri, storage)
    entries = []
    for s in range(shards):
        ids = [f"row-{s}-{i}" for i in range(ROWS)]
        table = make_table(
            "latent",
            ids=ids,
            tensors=np.random.default_rng(s).standard_normal((ROWS, *SHAPE)),
            sigma_n=np.full(ROWS, sigma),
            captions=[f"caption {i}" for i in ids],
            original_size_hw=np.full((ROWS, 2), 64),
            crop_top_left=np.zeros((ROWS, 2)),
            noise_seed=0,
        )
        name = f"shard-test-{s}.parquet"
        if not uri.startswith("s3://"):
            fs.create_dir(root, recursive=True)
        with fs.open_output_stream(f"{root}/{name}") as f:
            pq.write_table(table, f)
        entries.append(ShardEntry(file=name, rows=ROWS, bytes=fs.get_file_info(f"{root}/{name}").size))
    manifest = Manifest(
        dataset_id="test",
        schema_version=SCHEMA_VERSION,
        complete=True,
        created_at=utc_now(),
        space="latent",
        tensor_shape=list(SHAPE),
        resolution=16,
        num_rows=ROWS * shards,
        num_shards=shards,
        shards=entries,
        sigma_n=SigmaStats(min=sigma, max=sigma, mean=sigma, clean_rows=0),
        noise=NoiseInfo(seed=0, sigma_n=sigma),
    )
    write_manifest(uri, manifest, storage)
    return manifest


def edit_manifest(uri: str, storage=None, **changes) -> None:
    data = json.loads(read_text(f"{uri}/manifest.json", storage))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    write_bytes_atomic(f"{uri}/manifest.json", json.dumps(data).encode(), storage)


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


def test_missing_shard_and_wrong_row_count(dataset, tmp_path):
    (tmp_path / "ds" / "shard-test-2.parquet").unlink()
    with pytest.raises(ShardError, match=r"shard-test-2\.parquet .*missing"):
        open_dataset(dataset)
    data = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    data["shards"] = data["shards"][:2]
    data["shards"][0]["rows"] = ROWS + 1
    data.update(num_shards=2, num_rows=2 * ROWS + 1)
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(
        ShardError, match=rf"shard-test-0\.parquet .*has {ROWS} rows, the manifest lists {ROWS + 1}"
    ):
        open_dataset(dataset)


def test_schema_mismatch_and_bad_sigma_are_named(dataset, tmp_path):
    path = tmp_path / "ds" / "shard-test-0.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["caption"]), path)
    with pytest.raises(ShardError, match=r"shard-test-0\.parquet .*schema mismatch"):
        open_dataset(dataset)
    sigma = np.full(ROWS, 0.3, np.float32)
    sigma[2] = np.nan
    pq.write_table(table.set_column(2, "sigma_n", __import__("pyarrow").array(sigma)), path)
    with pytest.raises(ShardError, match=r"shard-test-0\.parquet .*sigma_n has 1 non-finite"):
        open_dataset(dataset)


def test_wrong_schema_version(dataset):
    edit_manifest(dataset, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(ManifestError, match=rf"schema version {SCHEMA_VERSION + 1}.*understands version"):
        open_dataset(dataset)


def test_missing_and_incomplete_manifest(dataset, tmp_path):
    edit_manifest(dataset, shards=None)
    with pytest.raises(ManifestError, match=r"incomplete or malformed: shards: Field required"):
        open_dataset(dataset)
    edit_manifest(dataset, shards=[], complete=False)
    with pytest.raises(ManifestError, match="not marked complete"):
        open_dataset(dataset)
    (tmp_path / "ds" / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="no manifest.json at .*did not finish"):
        open_dataset(dataset)
    with pytest.raises(ManifestError, match="no manifest.json"):
        open_dataset(str(tmp_path / "nothing-here"))


def test_latent_shape_must_match_the_model(dataset):
    with pytest.raises(DataError, match=r"shape \(4, 8, 8\), the model expects \(4, 16, 16\)"):
        open_dataset(dataset, expected_latent_shape=(4, 16, 16))


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
