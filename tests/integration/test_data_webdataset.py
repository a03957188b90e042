"""prepare_shards from webdataset tars (``source.kind: webdataset``), local and on SeaweedFS S3: ids
``<tar>/<key>``, rejected samples with reasons, a truncated tar keeps the samples before the damage."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ambient.storage import resolve_filesystem
from tests.helpers.webdataset_tars import (
    prepare_webdataset,
    shard_good,
    shard_truncated,
    shard_with_bad_keys,
    tar_bytes,
)

pytestmark = pytest.mark.integration

GOOD_IDS = {
    "00000.tar/000000",
    "00000.tar/000001",
    "00000.tar/sub/000002",
    "00001.tar/000010",
    "00002.tar/000020",
    "00002.tar/000021",
}


def write_tars(uri: str, storage) -> None:
    fs, root = resolve_filesystem(uri, storage)
    truncated, _ = shard_truncated()
    files = {
        "00000.tar": tar_bytes(shard_good()),
        "00001.tar": tar_bytes(shard_with_bad_keys()),
        "00002.tar": truncated,
        "README.md": b"not a shard",
    }
    if storage is None:
        fs.create_dir(root, recursive=True)
    for name, data in files.items():
        with fs.open_output_stream(f"{root}/{name}") as f:
            f.write(data)


def rows_written(dest: str, res, storage=None) -> dict[str, dict]:
    fs, root = resolve_filesystem(dest, storage)
    tables = []
    for shard in res.manifest.shards:
        with fs.open_input_file(f"{root}/{shard.file}") as f:
            tables.append(pq.read_table(f, columns=["id", "caption"]))
    return {r["id"]: r for r in pa.concat_tables(tables).to_pylist()}


@pytest.fixture(scope="module", params=["local", "s3"])
def prepared(request, ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("webdataset")
    if request.param == "local":
        source, dest, storage = str(root / "tars"), str(root / "out"), None
    else:
        server = request.getfixturevalue("seaweedfs")
        storage = server.storage()
        source = f"s3://{server.bucket}/webdataset/tars"
        dest = f"s3://{server.bucket}/webdataset/out"
    write_tars(source, storage)
    res = prepare_webdataset(source, dest, storage)
    return res, rows_written(dest, res, storage)


def test_webdataset_tars_prepare_like_folders(prepared):
    res, rows = prepared
    assert set(rows) == GOOD_IDS and res.summary["rows_written"] == len(GOOD_IDS)
    assert rows["00000.tar/000001"]["caption"] == "a red square"  # from the .json member
    assert rows["00000.tar/sub/000002"]["caption"] == "a tall photo"


def test_bad_samples_are_rejected_with_their_reasons(prepared):
    res, _ = prepared
    reasons = {r["id"]: r["reason"] for r in res.summary["rejected"]}
    assert set(reasons) == {"00001.tar/000011", "00001.tar/000012", "00001.tar/000013", "00002.tar/000022"}
    assert reasons["00001.tar/000011"] == "no image in sample: found .json, .txt"
    assert reasons["00001.tar/000012"] == "missing caption"
    assert reasons["00001.tar/000013"].startswith("unreadable image")
    assert reasons["00002.tar/000022"].startswith("damaged tar: ")
    assert res.summary["rejected_by_reason"] == {
        "no image in sample": 1,
        "missing caption": 1,
        "unreadable image": 1,
        "damaged tar": 1,
    }
