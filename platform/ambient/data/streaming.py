"""Streaming a prepared dataset into training: a Ray Dataset that reads the manifest's shards file by
file in a per-epoch order, and the collate that turns its numpy batches into torch tensors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import ray.data
import torch

from ambient.storage import StorageConfig, resolve_filesystem

# DatasetInfo and the epoch orders live in the torch-free ``order`` module; importers of this module
# get them here too.
from .order import DatasetInfo, RankSlice, StreamPlan, epoch_order, epoch_orders
from .row_stream import rank_stream
from .schema import TEXT_COLUMNS, dataset_schema
from .shard_source import DEFAULT_MIN_TASK_BYTES, ShardDatasource
from .validate import ValidationReport, load_manifest, validate_dataset

TENSOR_COLUMNS = ("latent", "image")


def inspect_dataset(
    uri: str,
    storage: StorageConfig | None = None,
    *,
    skip_bad_shards: bool = False,
    expected_latent_shape: Sequence[int] | None = None,
) -> DatasetInfo:
    """Load the manifest and validate every listed shard once (footer, schema, row count, sigma_n).

    ``info.files`` are the good shards in the manifest's order; stream them with ``stream_epochs``."""
    storage = (storage or StorageConfig()).resolved()
    manifest = load_manifest(uri, storage)
    fs, root = resolve_filesystem(uri, storage)
    report: ValidationReport = validate_dataset(
        fs, root, manifest, skip_bad_shards=skip_bad_shards, expected_latent_shape=expected_latent_shape
    )
    if manifest.text_embeddings is not None:
        from .text import read_empty_caption

        read_empty_caption(uri, manifest, storage)  # a missing or malformed file fails here, named
    return DatasetInfo(
        uri=uri,
        manifest=manifest,
        epoch=0,
        files=[s.file for s in report.good_shards],
        rows=report.rows_ok,
        rows_skipped=report.rows_skipped,
        bad_shards=report.bad_shards,
    )


# Rows are shuffled inside windows of consecutive shards of at least this many rows (per epoch).
DEFAULT_WINDOW_ROWS = 1024


def stream_epochs(
    info: DatasetInfo,
    storage: StorageConfig | None = None,
    *,
    epochs: Sequence[int] = (0,),
    shuffle_seed: int = 0,
    min_task_bytes: int = DEFAULT_MIN_TASK_BYTES,
    window_rows: int = DEFAULT_WINDOW_ROWS,
) -> ray.data.Dataset:
    """One streaming Ray Dataset over the validated shards of ``info``, epoch after epoch, each epoch in
    its own seeded file order (read tasks never span two epochs).

    ``window_rows > 0`` (the default) also permutes the rows inside windows of consecutive shards of at
    least that many rows, differently every epoch (``ambient.data.row_stream``; ``epochs`` must then be
    consecutive). ``window_rows = 0`` keeps each file's row order and groups files into read tasks of
    ``min_task_bytes``."""
    storage = (storage or StorageConfig()).resolved()
    epochs = list(epochs)
    if window_rows > 0 and epochs:
        if epochs != list(range(epochs[0], epochs[0] + len(epochs))):
            raise ValueError(f"epochs {epochs[:5]}...: window shuffling streams consecutive epochs only")
        plan = StreamPlan.from_info(info, shuffle_seed, window_rows)
        n = plan.epoch_rows
        return rank_stream(plan, RankSlice(start=epochs[0] * n, stop=(epochs[-1] + 1) * n), storage)
    fs, root = resolve_filesystem(info.uri, storage)
    shards = {s.file: (s.rows, s.bytes) for s in info.manifest.shards}
    passes = epoch_orders(info.files, shuffle_seed, epochs)
    schema = dataset_schema(info.manifest)
    return ray.data.read_datasource(
        ShardDatasource(fs, root, passes, shards, schema, min_task_bytes=min_task_bytes)
    )


def open_dataset(
    uri: str,
    storage: StorageConfig | None = None,
    *,
    epoch: int = 0,
    shuffle_seed: int = 0,
    skip_bad_shards: bool = False,
    expected_latent_shape: Sequence[int] | None = None,
) -> tuple[ray.data.Dataset, DatasetInfo]:
    """Validate the dataset at ``uri`` and return a streaming Ray Dataset over one epoch of its shards
    (``info.files`` in that epoch's read order)."""
    info = inspect_dataset(
        uri, storage, skip_bad_shards=skip_bad_shards, expected_latent_shape=expected_latent_shape
    )
    ds = stream_epochs(info, storage, epochs=[epoch], shuffle_seed=shuffle_seed)
    return ds, replace(info, epoch=epoch, files=epoch_order(info.files, shuffle_seed, epoch))


def collate_batch(batch: dict[str, np.ndarray]) -> dict:
    """A numpy batch from ``iter_batches(batch_format="numpy")`` -> torch tensors + captions and ids.

    Keys: ``latent`` (or ``image``) float32 (B, C, H, W); ``sigma_n`` float32 (B,); ``original_size_hw``
    and ``crop_top_left`` int64 (B, 2); ``noise_seed`` int64 (B,); ``captions`` and ``ids`` list[str];
    with stored text embeddings also ``prompt_embeds`` (B, L, D) and ``pooled_prompt_embeds`` (B, D2),
    kept float16 (the conditioning casts them).
    """
    out: dict = {}
    for name in TENSOR_COLUMNS:
        if name in batch:
            out[name] = torch.from_numpy(np.array(batch[name], dtype=np.float32))
    # np.array copies: Ray Data's numpy columns are read-only views, which torch warns about.
    out["sigma_n"] = torch.from_numpy(np.array(batch["sigma_n"], dtype=np.float32))
    for name in ("original_size_hw", "crop_top_left"):
        out[name] = torch.from_numpy(np.stack(batch[name]).astype(np.int64).reshape(-1, 2))
    for name in TEXT_COLUMNS:
        if name in batch:
            out[name] = torch.from_numpy(np.array(batch[name], dtype=np.float16))
    if "noise_seed" in batch:
        out["noise_seed"] = torch.from_numpy(np.array(batch["noise_seed"], dtype=np.int64))
    out["captions"] = [str(c) for c in batch["caption"]]
    out["ids"] = [str(i) for i in batch["id"]]
    return out


def iter_training_batches(
    ds: ray.data.Dataset | ray.data.DataIterator,
    batch_size: int,
    *,
    drop_last: bool = False,
    prefetch_batches: int = 2,
) -> Iterator[dict]:
    """Collated batches from a Dataset or a Ray Train dataset shard (``get_dataset_shard``)."""
    for batch in ds.iter_batches(
        batch_size=batch_size, batch_format="numpy", drop_last=drop_last, prefetch_batches=prefetch_batches
    ):
        yield collate_batch(batch)
