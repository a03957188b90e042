"""The deterministic row stream of a run, and each rank's exact share of it (exact resume).

Every epoch has one planned row order (``ambient.data.order``): the shards in the epoch's seeded order,
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

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from ambient.storage import StorageConfig, resolve_filesystem

# The plan types live in the torch-free ``order`` module; importers of this module get them here too.
from .order import RankSlice, StreamPlan, Window, window_permutation
from .order import epoch_windows as epoch_windows
from .order import window_seed as window_seed
from .shard_source import read_shards


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
