"""Streaming a prepared dataset into training: a Ray Dataset that reads the manifest's shards file by
file in a per-epoch order, and the collate that turns its numpy batches into torch tensors."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import ray.data
import torch
from ray.data import DataContext

from .schema import Manifest
from .storage import StorageConfig, resolve_filesystem
from .validate import ValidationReport, load_manifest, validate_dataset

TENSOR_COLUMNS = ("latent", "image")


@dataclass
class DatasetInfo:
    uri: str
    manifest: Manifest
    epoch: int
    files: list[str]  # in this epoch's read order, relative to the dataset folder
    rows: int  # rows this dataset will yield (manifest rows minus skipped shards)
    rows_skipped: int = 0
    bad_shards: list[tuple[str, str]] = field(default_factory=list)

    @property
    def tensor_column(self) -> str:
        return self.manifest.tensor_column

    def counts(self) -> dict[str, int]:
        """For the run summary: nothing is dropped without being counted."""
        return {"rows": self.rows, "rows_skipped": self.rows_skipped, "shards_skipped": len(self.bad_shards)}


def epoch_order(files: Sequence[str], shuffle_seed: int, epoch: int) -> list[str]:
    """The shard order of one epoch: a permutation seeded by (shuffle_seed, epoch), never the same as
    the previous epoch's (with few shards two epochs could otherwise draw the same permutation)."""
    order = _permutation(files, shuffle_seed, epoch)
    if len(files) < 2 or epoch == 0:
        return order
    if len(files) > 8:  # a repeat is ~1/n!: compare with the previous draw only
        previous = _permutation(files, shuffle_seed, epoch - 1)
    else:  # few files: follow the chain of adjusted orders exactly (cheap)
        previous = _permutation(files, shuffle_seed, 0)
        for e in range(1, epoch):
            draw = _permutation(files, shuffle_seed, e)
            previous = _swap_first(draw) if draw == previous else draw
    return _swap_first(order) if order == previous else order


def _swap_first(order: list[str]) -> list[str]:
    return [order[1], order[0], *order[2:]]


def _permutation(files: Sequence[str], shuffle_seed: int, epoch: int) -> list[str]:
    order = sorted(files)
    random.Random(f"ambient-shards:{shuffle_seed}:{epoch}").shuffle(order)
    return order


def open_dataset(
    uri: str,
    storage: StorageConfig | None = None,
    *,
    epoch: int = 0,
    shuffle_seed: int = 0,
    skip_bad_shards: bool = False,
    expected_latent_shape: Sequence[int] | None = None,
) -> tuple[ray.data.Dataset, DatasetInfo]:
    """Validate the dataset at ``uri`` and return a streaming Ray Dataset over its listed shards."""
    storage = (storage or StorageConfig()).resolved()
    manifest = load_manifest(uri, storage)
    fs, root = resolve_filesystem(uri, storage)
    report: ValidationReport = validate_dataset(
        fs, root, manifest, skip_bad_shards=skip_bad_shards, expected_latent_shape=expected_latent_shape
    )
    files = epoch_order([s.file for s in report.good_shards], shuffle_seed, epoch)
    # Ray 2.60's default (v2) Parquet datasource packs small files into one read task; v1 makes one
    # read task per file, which streams and keeps this epoch's file order.
    DataContext.get_current().use_datasource_v2 = False
    ds = ray.data.read_parquet(
        [f"{root.rstrip('/')}/{f}" for f in files],
        filesystem=fs,
        file_extensions=None,
        partitioning=None,
        override_num_blocks=len(files),
    )
    info = DatasetInfo(
        uri=uri,
        manifest=manifest,
        epoch=epoch,
        files=files,
        rows=report.rows_ok,
        rows_skipped=report.rows_skipped,
        bad_shards=report.bad_shards,
    )
    return ds, info


def collate_batch(batch: dict[str, np.ndarray]) -> dict:
    """A numpy batch from ``iter_batches(batch_format="numpy")`` -> torch tensors + captions and ids.

    Keys: ``latent`` (or ``image``) float32 (B, C, H, W); ``sigma_n`` float32 (B,); ``original_size_hw``
    and ``crop_top_left`` int64 (B, 2); ``noise_seed`` int64 (B,); ``captions`` and ``ids`` list[str].
    """
    out: dict = {}
    for name in TENSOR_COLUMNS:
        if name in batch:
            out[name] = torch.from_numpy(np.asarray(batch[name], dtype=np.float32))
    out["sigma_n"] = torch.from_numpy(np.asarray(batch["sigma_n"], dtype=np.float32))
    for name in ("original_size_hw", "crop_top_left"):
        out[name] = torch.from_numpy(np.stack(batch[name]).astype(np.int64).reshape(-1, 2))
    if "noise_seed" in batch:
        out["noise_seed"] = torch.from_numpy(np.asarray(batch["noise_seed"], dtype=np.int64))
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
