"""A small valid latent dataset written directly with the schema helpers (no pipeline, no VAE, no
Ray), and manifest edits, for the reader's error tests and the row-stream tests."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from ambient.data.schema import (
    SCHEMA_VERSION,
    Manifest,
    NoiseInfo,
    ShardEntry,
    SigmaStats,
    make_table,
    utc_now,
)
from ambient.data.writer import write_manifest
from ambient.storage import read_text, resolve_filesystem, write_bytes_atomic

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
