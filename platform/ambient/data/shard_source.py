"""A Ray Data datasource over a validated dataset's shard files: one read task per group of
consecutive files, read with pyarrow's native filesystem.

Why not ``ray.data.read_parquet``: in Ray 2.60 its default (v2) reader packs small files into one
task in its own order, and its v1 reader wraps the filesystem in a Python retry handler, samples files
to estimate sizes and re-reads every footer on each call. Measured on the demo shards
(benchmarks/data_throughput.py) that cost about half of the direct read's rows/s. The manifest
already knows every file's rows and bytes, and the files were validated once before training, so a
read task needs nothing but the file names, in the epoch's order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from .errors import ShardError

# Files are grouped until a read task holds at least this many bytes: small demo shards (~0.5 MB)
# share a task, SDXL-size shards (tens of MB) get one each. Per-task overhead is a few milliseconds.
DEFAULT_MIN_TASK_BYTES = 16 * 1024 * 1024


def group_by_bytes(sizes: Sequence[int], min_task_bytes: int = DEFAULT_MIN_TASK_BYTES) -> list[list[int]]:
    """Indices of consecutive files per read task; order is kept, every file appears once."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, size in enumerate(sizes):
        current.append(i)
        total += size
        if total >= min_task_bytes:
            groups.append(current)
            current, total = [], 0
    if current:
        groups.append(current)
    return groups


def read_shards(fs: pafs.FileSystem, root: str, files: Sequence[str]) -> Iterator[pa.Table]:
    """The body of one read task: one block per file, yielded as soon as it is read (Ray streams each
    block to the consumer while the task reads the next file); an error names the shard."""
    for name in files:
        try:
            with fs.open_input_file(f"{root.rstrip('/')}/{name}") as f:
                table = pq.ParquetFile(f).read()  # no dataset discovery: the file is known
        except (OSError, ValueError) as exc:  # pyarrow's IO and Parquet errors
            raise ShardError(f"reading shard {name}: {exc}") from exc
        yield table


class ShardDatasource(Datasource):
    """Reads a sequence of passes over shard files: ``passes[k]`` lists file names relative to ``root``
    in the order of pass ``k`` (one pass per epoch). ``shards`` maps each name to its (rows, bytes) from
    the manifest. Read tasks group consecutive files of one pass, never two passes."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        root: str,
        passes: Sequence[Sequence[str]],
        shards: Mapping[str, tuple[int, int]],
        schema: pa.Schema,
        min_task_bytes: int = DEFAULT_MIN_TASK_BYTES,
    ):
        unknown = sorted({f for files in passes for f in files} - set(shards))
        if unknown:
            raise ValueError(f"files without rows/bytes: {unknown[:3]}")
        self._fs, self._root, self._schema, self._shards = fs, root, schema, dict(shards)
        self._groups: list[list[str]] = []
        for files in passes:
            sizes = [self._shards[f][1] for f in files]
            self._groups += [[files[i] for i in group] for group in group_by_bytes(sizes, min_task_bytes)]

    def get_name(self) -> str:
        return "ReadShards"

    def estimate_inmemory_data_size(self) -> int:
        return sum(self._shards[f][1] for group in self._groups for f in group)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
        tasks = []
        for names in self._groups:
            metadata = BlockMetadata(
                num_rows=sum(self._shards[f][0] for f in names),
                size_bytes=sum(self._shards[f][1] for f in names),
                exec_stats=None,
                input_files=tuple(names),
            )
            fs, root = self._fs, self._root
            tasks.append(
                ReadTask(
                    lambda fs=fs, root=root, names=names: read_shards(fs, root, names),
                    metadata,
                    schema=self._schema,
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return tasks
