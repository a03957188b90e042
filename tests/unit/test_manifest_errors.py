"""The reader's clear errors that need no Ray: a missing shard, a wrong row count, a schema mismatch,
a non-finite sigma_n, a wrong schema version, a missing or incomplete manifest, a latent shape the
model does not take (all raised while the dataset is inspected, before any Ray Data read). The errors
that need a stream or S3 are in tests/integration/test_data_errors.py."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from ambient.data import DataError, ManifestError, ShardError, open_dataset
from ambient.data.schema import SCHEMA_VERSION
from tests.helpers.datasets import ROWS, edit_manifest, write_dataset


@pytest.fixture
def dataset(tmp_path) -> str:
    uri = str(tmp_path / "ds")
    write_dataset(uri)
    return uri


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
