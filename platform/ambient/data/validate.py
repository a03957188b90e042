"""Validation before training: the manifest is complete and of our schema version, and every listed
shard has the schema, row count, tensor shape and sigma_n (finite, >= 0) the manifest promises (and,
when the manifest records text embeddings, their two columns with its shapes, float16).

A bad shard raises ShardError naming the file and the problem, or, with ``skip_bad_shards``, is left
out and counted. Nothing is dropped silently: the report carries rows read and rows skipped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import ValidationError

from ambient.storage import StorageConfig, join, read_text

from .errors import DataError, ManifestError, ShardError
from .schema import MANIFEST_NAME, SCHEMA_VERSION, Manifest, ShardEntry, dataset_schema


def load_manifest(uri: str, storage: StorageConfig | None = None) -> Manifest:
    """Read and check a dataset's manifest; ManifestError when it is missing, incomplete or foreign."""
    where = join(uri, MANIFEST_NAME)
    try:
        text = read_text(where, storage)
    except FileNotFoundError:
        raise ManifestError(
            f"no {MANIFEST_NAME} at {uri}: not a dataset, or its preparation did not finish "
            "(run jobs/prepare_shards.py; shards without a manifest are never read)"
        ) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where} is not valid JSON (incomplete manifest?): {exc}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where} must hold a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"{where} has schema version {version!r}; this reader understands version {SCHEMA_VERSION} "
            "(re-run jobs/prepare_shards.py with this version of ambient)"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ManifestError(f"{where} is incomplete or malformed: {problems}") from None
    if not manifest.complete:
        raise ManifestError(f"{where} is not marked complete")
    if manifest.num_shards != len(manifest.shards) or manifest.num_rows != sum(
        s.rows for s in manifest.shards
    ):
        raise ManifestError(f"{where} is inconsistent: its shard list does not add up to num_shards/num_rows")
    return manifest


@dataclass
class ValidationReport:
    rows_expected: int
    good_shards: list[ShardEntry] = field(default_factory=list)
    bad_shards: list[tuple[str, str]] = field(default_factory=list)  # (file, problem)
    rows_skipped: int = 0

    @property
    def rows_ok(self) -> int:
        return sum(s.rows for s in self.good_shards)


def check_shard(fs: pafs.FileSystem, root: str, manifest: Manifest, entry: ShardEntry) -> str | None:
    """The problem with one shard, or None when it is good (reads the footer and sigma_n only)."""
    path = f"{root.rstrip('/')}/{entry.file}"
    expected = dataset_schema(manifest)
    try:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            if _columns(schema) != _columns(expected):
                return _schema_problem(schema, expected)
            if pf.metadata.num_rows != entry.rows:
                return f"has {pf.metadata.num_rows} rows, the manifest lists {entry.rows}"
            sigma = pf.read(columns=["sigma_n"]).column("sigma_n").to_numpy(zero_copy_only=False)
    except FileNotFoundError:
        return "missing (listed in the manifest but not found)"
    except OSError as exc:  # pyarrow's ArrowInvalid/ArrowIOError are OSError/ValueError subclasses
        return f"unreadable: {exc}"
    except ValueError as exc:
        return f"corrupt Parquet: {exc}"
    if not np.isfinite(sigma).all():
        return f"sigma_n has {int((~np.isfinite(sigma)).sum())} non-finite values"
    if (sigma < 0).any():
        return f"sigma_n has {int((sigma < 0).sum())} negative values"
    return None


def _schema_problem(schema, expected) -> str:
    """What differs, column by column first (a wrong text-embedding shape names its column)."""
    got = dict(_columns(schema))
    for name, kind in _columns(expected):
        if name not in got:
            return f"schema mismatch: column {name} is missing (expected {kind}); schema: {_describe(schema)}"
        if got[name] != kind:
            return f"schema mismatch: column {name} is {got[name]}, expected {kind}"
    return f"schema mismatch: got {_describe(schema)}, expected {_describe(expected)}"


def _columns(schema) -> list[tuple[str, str]]:
    # Names and types only: writers differ in field nullability, which the reader does not rely on.
    return [(f.name, str(f.type)) for f in schema]


def _describe(schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def validate_dataset(
    fs: pafs.FileSystem,
    root: str,
    manifest: Manifest,
    *,
    skip_bad_shards: bool = False,
    expected_latent_shape: Sequence[int] | None = None,
    threads: int = 8,
) -> ValidationReport:
    if expected_latent_shape is not None and tuple(expected_latent_shape) != tuple(manifest.tensor_shape):
        raise DataError(
            f"dataset {manifest.dataset_id} holds {manifest.space} tensors of shape "
            f"{tuple(manifest.tensor_shape)}, "
            f"the model expects {tuple(expected_latent_shape)} (prepared with another VAE or resolution?)"
        )
    with ThreadPoolExecutor(max_workers=threads) as pool:
        problems = list(pool.map(lambda e: check_shard(fs, root, manifest, e), manifest.shards))
    report = ValidationReport(rows_expected=manifest.num_rows)
    for entry, problem in zip(manifest.shards, problems, strict=True):
        if problem is None:
            report.good_shards.append(entry)
            continue
        if not skip_bad_shards:
            raise ShardError(f"bad shard {entry.file} of dataset {manifest.dataset_id}: {problem}")
        report.bad_shards.append((entry.file, problem))
        report.rows_skipped += entry.rows
    if not report.good_shards:
        raise ShardError(f"dataset {manifest.dataset_id}: no readable shard ({len(report.bad_shards)} bad)")
    return report
