"""Shard writing: one Parquet file per batch, named by the run id; the manifest, written last.

Each write task reports what it wrote (file, rows, bytes, sigma_n sums) and which rows it dropped
and why; the driver folds the reports into the summary and the manifest. After the manifest is
committed, ``remove_stale_shards`` deletes the shard files of older or crashed runs that it does not list
(those written before this run took the destination's lock, or by this run itself).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ambient.storage import StorageConfig, join, resolve_filesystem, storage_error, write_bytes_atomic

from .schema import (
    MANIFEST_NAME,
    POOLED_EMBEDS,
    PROMPT_EMBEDS,
    SHARD_SUFFIX,
    Manifest,
    ShardEntry,
    SigmaStats,
    Space,
    make_table,
)
from .text import EMPTY_CAPTION_PATTERN

# shard-<run id: local time %Y%m%d%H%M%S-8 hex>-<12 hex>.parquet: the only files cleanup may delete.
SHARD_PATTERN = re.compile(rf"shard-\d{{14}}-[0-9a-f]{{8}}-[0-9a-f]{{12}}{re.escape(SHARD_SUFFIX)}")


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"


def shard_name(run_id: str) -> str:
    return f"shard-{run_id}-{uuid.uuid4().hex[:12]}{SHARD_SUFFIX}"


class ShardWriter:
    """map_batches callable: writes the batch's valid rows as one shard, returns a one-row report."""

    def __init__(
        self,
        uri: str,
        storage: StorageConfig | None,
        run_id: str,
        space: Space,
        sigma_n: float,
        noise_seed: int,
    ):
        self.uri, self.storage, self.run_id = uri, storage, run_id
        self.space, self.sigma_n, self.noise_seed = space, sigma_n, noise_seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rejects = [str(r) for r in batch["reject"]]
        keep = np.array([not r for r in rejects], dtype=bool)
        report: dict = {
            "rejected": [[str(i), r] for i, r in zip(batch["id"], rejects, strict=True) if r],
            "file": None,
            "rows": 0,
            "bytes": 0,
        }
        n = int(keep.sum())
        if n:
            sigma = np.full(n, self.sigma_n, np.float32)
            text = PROMPT_EMBEDS in batch  # encode.text_embeddings: the encoder added both columns
            table = make_table(
                self.space,
                ids=[str(i) for i in batch["id"][keep]],
                tensors=batch["tensor"][keep],
                sigma_n=sigma,
                captions=[str(c) for c in batch["caption"][keep]],
                original_size_hw=batch["original_size_hw"][keep],
                crop_top_left=batch["crop_top_left"][keep],
                noise_seed=self.noise_seed,
                prompt_embeds=batch[PROMPT_EMBEDS][keep] if text else None,
                pooled_prompt_embeds=batch[POOLED_EMBEDS][keep] if text else None,
            )
            name = shard_name(self.run_id)
            target = join(self.uri, name)
            fs, path = resolve_filesystem(target, self.storage)
            try:
                # Shard names are unique per run, so a partly written shard is never listed by any manifest.
                with fs.open_output_stream(path) as f:
                    pq.write_table(table, f, compression="zstd")
                size = fs.get_file_info(path).size
            except OSError as exc:
                raise storage_error(target, "write shard", exc, self.storage) from None
            report.update(
                file=name,
                rows=n,
                bytes=int(size),
                sigma_sum=float(sigma.sum(dtype=np.float64)),
                sigma_min=float(sigma.min()),
                sigma_max=float(sigma.max()),
                clean=int((sigma == 0).sum()),
            )
        return {"report": [json.dumps(report)]}


@dataclass
class WriteReport:
    shards: list[ShardEntry] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    sigma: SigmaStats | None = None

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def reject_reasons(self) -> dict[str, int]:
        # Group by the reason's kind (before the first ':') so the summary stays short.
        return dict(Counter(reason.split(":")[0] for _, reason in self.rejected).most_common())


def fold_reports(raw: list[str]) -> WriteReport:
    out = WriteReport()
    total, lo, hi, clean = 0.0, float("inf"), float("-inf"), 0
    for text in raw:
        rep = json.loads(text)
        out.rejected.extend((i, r) for i, r in rep["rejected"])
        if rep["file"]:
            out.shards.append(ShardEntry(file=rep["file"], rows=rep["rows"], bytes=rep["bytes"]))
            total += rep["sigma_sum"]
            lo, hi = min(lo, rep["sigma_min"]), max(hi, rep["sigma_max"])
            clean += rep["clean"]
    out.shards.sort(key=lambda s: s.file)
    if out.rows:
        out.sigma = SigmaStats(min=lo, max=hi, mean=total / out.rows, clean_rows=clean)
    return out


def write_manifest(uri: str, manifest: Manifest, storage: StorageConfig | None) -> str:
    """Write the manifest atomically, as the very last step of a run; returns its URI."""
    target = join(uri, MANIFEST_NAME)
    write_bytes_atomic(target, manifest.model_dump_json(indent=2).encode(), storage)
    return target


@dataclass
class StaleShards:
    """What the cleanup after a committed run removed; ``error`` when it stopped early."""

    removed_files: int = 0
    removed_bytes: int = 0
    error: str | None = None


def is_run_file(name: str) -> bool:
    """A file a preparation run names after itself: a shard, or an empty-caption embedding file."""
    return bool(SHARD_PATTERN.fullmatch(name) or EMPTY_CAPTION_PATTERN.fullmatch(name))


def is_removable(info: pafs.FileInfo, keep: set[str], run_id: str | None, lock_mtime: float | None) -> bool:
    """An unlisted run file that run ``run_id`` wrote, or one that predates its lock (by the store's
    clock; no ``lock_mtime``: any unlisted run file). A later file (another run's, which took the lock
    over) is left alone: at one-second mtime resolution "predates" includes the lock's own second, as
    a takeover comes at least a lease (>= 1 s) after the lock was taken."""
    name = info.base_name
    if info.type != pafs.FileType.File or name in keep or not is_run_file(name):
        return False
    if lock_mtime is None or (run_id and run_id in name):  # run files are named by their run id
        return True
    return info.mtime is not None and info.mtime.timestamp() <= lock_mtime


def remove_stale_shards(
    uri: str,
    keep: set[str],
    storage: StorageConfig | None,
    run_id: str | None = None,
    lock_mtime: float | None = None,
) -> StaleShards:
    """Delete the shard files directly in ``uri`` (named by ``SHARD_PATTERN``, and the empty-caption
    embedding files named by ``EMPTY_CAPTION_PATTERN``) that are not in ``keep`` and that run ``run_id``
    wrote or that predate its lock (``lock_mtime``, the lock object's mtime when it was taken).

    Call only after the manifest listing ``keep`` is committed, while holding the lock: the removed
    files are then shards of superseded or crashed runs, which no current manifest lists. Other files
    and subfolders are never touched. A failure (say, a bucket policy without delete) stops the
    cleanup and is reported, not raised: the new dataset is committed and complete either way."""
    out = StaleShards()
    fs, root = resolve_filesystem(uri, storage)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=False))
        for info in infos:
            if not is_removable(info, keep, run_id, lock_mtime):
                continue
            try:
                fs.delete_file(info.path)
            except FileNotFoundError:
                continue  # already gone
            out.removed_files += 1
            out.removed_bytes += int(info.size or 0)
    except OSError as exc:
        out.error = str(storage_error(uri, "remove stale shards in", exc, storage))
    return out
