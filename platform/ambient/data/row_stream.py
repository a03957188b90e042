"""The deterministic row stream of a run, and each rank's exact share of it (exact resume).

Every epoch has one planned row order: the shards in the epoch's seeded order (``epoch_orders``),
grouped into consecutive *windows* of at least ``window_rows`` rows, and the rows of each window
permuted by a generator seeded by (shuffle_seed, epoch, window). Epochs follow each other, so a
run's stream is one sequence of global positions 0, 1, 2, ... (position p is row p % N of epoch
p // N, N = rows per epoch).

Ranks take micro-batches in turn, as MosaicML streaming partitions its samples: micro-batch k of
``world`` ranks x ``batch`` rows covers positions [start + k*world*batch, start + (k+1)*world*batch),
and rank r takes the r-th ``batch`` of them. After every rank has consumed the same number of
micro-batches the consumed rows are exactly the prefix [0, position) of the stream: a checkpoint
records that one number, and a resumed run (of any world size) continues at it, so no row is
skipped and none before the checkpoint is repeated.

A read task is one window of one epoch: it reads the window's shard files, permutes their rows and
keeps the positions of its rank, so memory is bounded by the window and every rank reads every
window (read amplification = world size in bytes; rows kept are 1/world of them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from ambient.storage import StorageConfig, resolve_filesystem

from .schema import dataset_schema
from .shard_source import read_shards

if TYPE_CHECKING:  # streaming imports torch, which read tasks should not pay for
    from .streaming import DatasetInfo


@dataclass(frozen=True)
class Window:
    """One window of one epoch: its files in read order and its span of epoch offsets."""

    epoch: int
    index: int  # the window's number inside its epoch
    files: tuple[str, ...]
    first: int  # epoch offset of the window's first row
    rows: int

    @property
    def last(self) -> int:
        return self.first + self.rows


@dataclass(frozen=True)
class RankSlice:
    """Which positions a rank consumes: micro-batches of ``batch`` rows, dealt in turn to ``world``
    ranks from global position ``start``; ``stop`` ends the stream (exclusive)."""

    start: int
    stop: int
    rank: int = 0
    world: int = 1
    batch: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} outside world size {self.world}")
        if self.batch < 1 or self.start < 0 or self.stop < self.start:
            raise ValueError(f"bad slice: batch {self.batch}, start {self.start}, stop {self.stop}")

    def mine(self, positions: np.ndarray) -> np.ndarray:
        """A boolean mask: which of these global positions are this rank's."""
        inside = (positions >= self.start) & (positions < self.stop)
        turn = ((positions - self.start) // self.batch) % self.world
        return inside & (turn == self.rank)


def window_seed(shuffle_seed: int, epoch: int, index: int) -> int:
    digest = hashlib.sha256(f"ambient-rows:{shuffle_seed}:{epoch}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def window_permutation(rows: int, shuffle_seed: int, epoch: int, index: int, shuffle: bool) -> np.ndarray:
    """The read order of a window's rows (indices into its files' rows, concatenated)."""
    if not shuffle:
        return np.arange(rows)
    return np.random.default_rng(window_seed(shuffle_seed, epoch, index)).permutation(rows)


def epoch_windows(files: Sequence[str], rows: dict[str, int], epoch: int, window_rows: int) -> list[Window]:
    """Consecutive shards of one epoch's order grouped until each group holds >= window_rows rows
    (window_rows 0: one window per shard)."""
    windows: list[Window] = []
    group: list[str] = []
    count, first = 0, 0
    for name in files:
        group.append(name)
        count += rows[name]
        if count >= max(window_rows, 1):
            windows.append(Window(epoch, len(windows), tuple(group), first, count))
            first, group, count = first + count, [], 0
    if group:
        windows.append(Window(epoch, len(windows), tuple(group), first, count))
    return windows


@dataclass(frozen=True)
class StreamPlan:
    """All a worker needs to stream its share: the validated files (manifest order) and their rows."""

    uri: str
    files: tuple[str, ...]
    rows: dict[str, int]
    bytes: dict[str, int]
    schema: pa.Schema
    shuffle_seed: int
    window_rows: int

    @classmethod
    def from_info(cls, info: DatasetInfo, shuffle_seed: int, window_rows: int) -> StreamPlan:
        shards = {s.file: s for s in info.manifest.shards}
        return cls(
            uri=info.uri,
            files=tuple(info.files),
            rows={f: shards[f].rows for f in info.files},
            bytes={f: shards[f].bytes for f in info.files},
            schema=dataset_schema(info.manifest),
            shuffle_seed=shuffle_seed,
            window_rows=window_rows,
        )

    @property
    def epoch_rows(self) -> int:
        return sum(self.rows.values())

    def windows(self, first_position: int, stop_position: int) -> list[Window]:
        """The windows (in stream order) that hold any position in [first_position, stop_position)."""
        n = self.epoch_rows
        if n == 0:
            raise ValueError(f"dataset {self.uri} has no rows to stream")
        if stop_position <= first_position:
            return []
        from .streaming import epoch_orders

        epochs = list(range(first_position // n, (stop_position - 1) // n + 1))
        out = []
        for epoch, order in zip(epochs, epoch_orders(self.files, self.shuffle_seed, epochs), strict=True):
            base = epoch * n
            for w in epoch_windows(order, self.rows, epoch, self.window_rows):
                if base + w.last > first_position and base + w.first < stop_position:
                    out.append(w)
        return out


def read_window(fs: pafs.FileSystem, root: str, plan: StreamPlan, window: Window, part: RankSlice):
    """The body of one read task: the rank's rows of one window, in stream order (one block)."""
    table = pa.concat_tables(list(read_shards(fs, root, window.files)))
    if table.num_rows != window.rows:
        raise ValueError(
            f"window {window.index} of epoch {window.epoch} ({', '.join(window.files)}): "
            f"{table.num_rows} rows read, the manifest lists {window.rows}"
        )
    perm = window_permutation(
        window.rows, plan.shuffle_seed, window.epoch, window.index, plan.window_rows > 0
    )
    positions = window.epoch * plan.epoch_rows + window.first + np.arange(window.rows)
    yield table.take(pa.array(perm[part.mine(positions)]))


class RankStreamDatasource(Datasource):
    """One rank's share of the stream, one read task per window (see the module docstring)."""

    def __init__(self, plan: StreamPlan, part: RankSlice, storage: StorageConfig):
        self._plan, self._part = plan, part
        self._fs, self._root = resolve_filesystem(plan.uri, storage)
        self._windows = plan.windows(part.start, part.stop)

    def get_name(self) -> str:
        return f"RankStream[{self._part.rank}/{self._part.world}]"

    def estimate_inmemory_data_size(self) -> int:
        return sum(self._plan.bytes[f] for w in self._windows for f in w.files) // self._part.world

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
        tasks = []
        n = self._plan.epoch_rows
        for w in self._windows:
            positions = w.epoch * n + w.first + np.arange(w.rows)
            metadata = BlockMetadata(
                num_rows=int(self._part.mine(positions).sum()),
                size_bytes=sum(self._plan.bytes[f] for f in w.files) // self._part.world,
                exec_stats=None,
                input_files=w.files,
            )
            args = (self._fs, self._root, self._plan, w, self._part)
            tasks.append(ReadTask(lambda args=args: read_window(*args), metadata, schema=self._plan.schema))
        return tasks


def rank_stream(plan: StreamPlan, part: RankSlice, storage: StorageConfig | None = None) -> ray.data.Dataset:
    """A Ray Dataset of exactly the rank's rows in stream order (order preserved)."""
    ds = ray.data.read_datasource(RankStreamDatasource(plan, part, (storage or StorageConfig()).resolved()))
    ds.context.execution_options.preserve_order = True
    return ds


def stream_ids(plan: StreamPlan, part: RankSlice, storage: StorageConfig | None = None) -> Iterator[str]:
    """The row ids of a rank's share, in order (reads the shards; for tests and audits)."""
    for batch in rank_stream(plan, part, storage).iter_batches(batch_format="pyarrow", batch_size=None):
        yield from (str(i) for i in batch.column("id").to_pylist())
