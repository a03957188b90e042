"""A small, fixed held-out batch read straight from a dataset's shards (no Ray), for validation."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import ray.data.extensions  # noqa: F401  (registers Ray's tensor extension type with pyarrow)

from ambient.storage import StorageConfig, resolve_filesystem

from .streaming import collate_batch
from .validate import load_manifest


def read_rows(
    uri: str,
    storage: StorageConfig | None = None,
    limit: int = 32,
    keep: Callable[[str], bool] | None = None,
) -> dict:
    """The first ``limit`` rows by id of the dataset at ``uri`` (only rows whose id ``keep`` accepts,
    if given), collated like a training batch.

    Deterministic whatever the shard layout, so every run that validates on ``uri`` sees the same rows.
    """
    manifest = load_manifest(uri, storage)
    fs, root = resolve_filesystem(uri, storage)
    tables = [pq.read_table(f"{root.rstrip('/')}/{s.file}", filesystem=fs) for s in manifest.shards]
    table = pa.concat_tables(tables).sort_by("id")
    if keep is not None:
        table = table.filter(pa.array([keep(str(i)) for i in table.column("id").to_pylist()]))
    table = table.slice(0, limit)
    batch = {
        name: table.column(name).combine_chunks().to_numpy(zero_copy_only=False)
        for name in table.column_names
    }
    return collate_batch(batch)


def row_ids(uri: str, storage: StorageConfig | None = None) -> list[str]:
    """Every row id of the dataset at ``uri`` (only the id column of each shard is read)."""
    manifest = load_manifest(uri, storage)
    fs, root = resolve_filesystem(uri, storage)
    return [
        str(row_id)
        for s in manifest.shards
        for row_id in pq.read_table(f"{root.rstrip('/')}/{s.file}", columns=["id"], filesystem=fs)
        .column("id")
        .to_pylist()
    ]
