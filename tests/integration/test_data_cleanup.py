"""Stale shards: after a committed prepare_shards run, the destination's shard files that its manifest
does not list (older or crashed runs) are deleted, and nothing else; local folders and SeaweedFS S3.

Pixel-space datasets (``encode.space=image``): cleanup does not depend on the VAE, and no VAE is faster.
"""

from __future__ import annotations

import json

import pytest

from ambient.config import load_config
from ambient.data import NoValidRowsError, PrepareShardsConfig, open_dataset, prepare_shards
from ambient.data.report import print_summary
from ambient.data.writer import SHARD_PATTERN, new_run_id, shard_name
from ambient.storage import join, list_files, read_bytes, read_text, write_bytes_atomic

pytestmark = pytest.mark.integration

COUNT = 8


def config(uri: str, storage, *extra: str) -> PrepareShardsConfig:
    overrides = [
        f"destination.uri={uri}",
        "encode.space=image",
        "resolution=16",
        f"source.count={COUNT}",
        "encode.batch_size=4",
        "rows_per_shard=4",
        "destination.overwrite=true",  # every test here prepares the same destination again
        *extra,
    ]
    cfg = load_config(PrepareShardsConfig, overrides=overrides)
    return cfg.model_copy(update={"storage": storage}) if storage else cfg


def synthetic_ids(seed: int) -> list[str]:
    return sorted(f"synthetic-{seed}-{i:06d}" for i in range(COUNT))


def read_ids(uri: str, storage) -> list[str]:
    ds, info = open_dataset(uri, storage)
    rows = ds.take_all()  # reads every listed shard in full
    assert len(rows) == info.rows and all(r["image"].shape == (3, 16, 16) for r in rows)
    return sorted(r["id"] for r in rows)


def crashed_shard(uri: str, storage, like: str) -> tuple[str, int]:
    """A shard of a run that crashed before its manifest: a real shard's bytes under a new run id."""
    name = shard_name(new_run_id())
    data = read_bytes(join(uri, like), storage)
    write_bytes_atomic(join(uri, name), data, storage)
    return name, len(data)


@pytest.fixture(params=["local", "s3"])
def destination(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "ds"), None
    s3 = request.getfixturevalue("seaweedfs")
    return f"s3://{s3.bucket}/cleanup/{tmp_path.name}/ds", s3.storage()


def test_next_run_removes_older_and_crashed_shards_and_nothing_else(ray_session, destination, capsys):
    uri, storage = destination
    first = prepare_shards(config(uri, storage, "source.seed=0"))
    assert first.summary["stale_shards"] == {"removed_files": 0, "removed_bytes": 0, "error": None}
    old = [s.file for s in first.manifest.shards]
    leftover, leftover_bytes = crashed_shard(uri, storage, old[0])
    # Files that must survive: not shard-named, in a subfolder, or in a sibling prefix ("ds-other").
    bystanders = {
        "README.txt": uri,
        "shard-backup.parquet": uri,
        f"{shard_name(new_run_id())}.bak": uri,
        f"notes/{shard_name(new_run_id())}": uri,
        shard_name(new_run_id()): f"{uri}-other",
    }
    for name, where in bystanders.items():
        write_bytes_atomic(join(where, name), b"keep me", storage)

    second = prepare_shards(config(uri, storage, "source.seed=1"))
    new = [s.file for s in second.manifest.shards]
    assert not set(new) & set(old) and all(SHARD_PATTERN.fullmatch(n) for n in new + old + [leftover])
    expected = {"manifest.json", "summary.json", *new} | {n for n, w in bystanders.items() if w == uri}
    assert set(list_files(uri, storage)) == expected
    assert list_files(f"{uri}-other", storage) == [n for n, w in bystanders.items() if w != uri]
    removed = {
        "removed_files": len(old) + 1,
        "removed_bytes": sum(s.bytes for s in first.manifest.shards) + leftover_bytes,
        "error": None,
    }
    assert second.summary["stale_shards"] == removed
    assert json.loads(read_text(join(uri, "summary.json"), storage))["stale_shards"] == removed
    assert read_ids(uri, storage) == synthetic_ids(1)

    print_summary(second.summary)
    assert f"removed {len(old) + 1} stale shards of older runs" in capsys.readouterr().out


def test_with_the_option_off_old_shards_stay_but_are_not_read(ray_session, tmp_path):
    uri = str(tmp_path / "ds")
    first = prepare_shards(config(uri, None, "source.seed=0"))
    leftover, _ = crashed_shard(uri, None, first.manifest.shards[0].file)
    second = prepare_shards(config(uri, None, "source.seed=1", "destination.remove_stale_shards=false"))
    shards = {s.file for s in first.manifest.shards} | {s.file for s in second.manifest.shards} | {leftover}
    assert set(list_files(uri, suffix=".parquet")) == shards
    assert second.summary["stale_shards"] is None
    assert read_ids(uri, None) == synthetic_ids(1)


def test_a_failed_run_deletes_nothing(ray_session, tmp_path):
    uri = str(tmp_path / "ds")
    first = prepare_shards(config(uri, None, "source.seed=0"))
    leftover, _ = crashed_shard(uri, None, first.manifest.shards[0].file)
    before = list_files(uri)
    src = tmp_path / "images"
    src.mkdir()
    (src / "a.png").write_bytes(b"not an image")
    (src / "a.txt").write_text("a caption")
    with pytest.raises(NoValidRowsError):
        prepare_shards(config(uri, None, "source.kind=folder", f"source.path={src}"))
    assert list_files(uri) == before and leftover in before
    assert read_ids(uri, None) == synthetic_ids(0)
