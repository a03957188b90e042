"""The planned order of a run's rows: seeded shard and row orders, windows, rank slices and the plan.

Nothing here reads a shard or imports torch: the driver builds a ``StreamPlan`` from a
``DatasetInfo``, and every Ray read task unpickles it (``ambient.data.row_stream`` reads the rows,
``ambient.data.streaming`` builds the datasets).

One seeding scheme: every seeded order of a run is drawn from the key ``order_key(seed, epoch,
purpose, index)``, ``ambient-<purpose>:<seed>:<epoch>[:<index>]``, so shard orders (purpose
``shards``) and the row order of each window (purpose ``rows``, index = window) never share a
stream and each is reproducible from (seed, epoch, window) alone. The shard order shuffles the
sorted file names with ``random.Random(key)`` (which hashes a str seed with SHA-512); a window's
rows are permuted by numpy's default generator seeded with ``order_seed``, the first 8 bytes of the
key's SHA-256. The two generators keep the derivations they always had because a checkpoint's
``data_position`` names a place in these exact orders: another derivation would resume into a
different stream.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

from .schema import Manifest, dataset_schema

Purpose = Literal["shards", "rows"]


@dataclass
class DatasetInfo:
    uri: str
    manifest: Manifest
    epoch: int
    # Good shards relative to the dataset folder: the manifest's order from inspect_dataset, the
    # epoch's read order from open_dataset.
    files: list[str]
    rows: int  # rows this dataset will yield (manifest rows minus skipped shards)
    rows_skipped: int = 0
    bad_shards: list[tuple[str, str]] = field(default_factory=list)

    @property
    def tensor_column(self) -> str:
        return self.manifest.tensor_column

    def counts(self) -> dict[str, int]:
        """For the run summary: nothing is dropped without being counted."""
        return {"rows": self.rows, "rows_skipped": self.rows_skipped, "shards_skipped": len(self.bad_shards)}


def order_key(seed: int, epoch: int, purpose: Purpose, index: int | None = None) -> str:
    """The key every seeded order is drawn from (see the module docstring)."""
    key = f"ambient-{purpose}:{seed}:{epoch}"
    return key if index is None else f"{key}:{index}"


def order_seed(seed: int, epoch: int, purpose: Purpose, index: int | None = None) -> int:
    """A 64-bit integer seed for numpy generators: the first 8 bytes of the key's SHA-256."""
    digest = hashlib.sha256(order_key(seed, epoch, purpose, index).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def epoch_order(files: Sequence[str], shuffle_seed: int, epoch: int) -> list[str]:
    """The shard order of one epoch: a permutation seeded by (shuffle_seed, epoch), never the same as
    the previous epoch's (with few shards two epochs could otherwise draw the same permutation)."""
    return epoch_orders(files, shuffle_seed, [epoch])[0]


def epoch_orders(files: Sequence[str], shuffle_seed: int, epochs: Sequence[int]) -> list[list[str]]:
    """``epoch_order`` for several epochs, in time linear in the largest epoch (a run may plan
    thousands of epochs over a small dataset)."""
    if len(files) > 8:  # a repeat is ~1/n!: compare each draw with the previous raw draw only
        orders = []
        for epoch in epochs:
            order = _permutation(files, shuffle_seed, epoch)
            if epoch > 0 and order == _permutation(files, shuffle_seed, epoch - 1):
                order = _swap_first(order)
            orders.append(order)
        return orders
    # Few files: follow the chain of adjusted orders exactly, once up to the largest epoch wanted.
    wanted = set(epochs)
    chain: dict[int, list[str]] = {}
    previous: list[str] | None = None
    for epoch in range(max(wanted, default=-1) + 1):
        order = _permutation(files, shuffle_seed, epoch)
        if previous is not None and len(files) >= 2 and order == previous:
            order = _swap_first(order)
        previous = order
        if epoch in wanted:
            chain[epoch] = order
    return [chain[e] for e in epochs]


def _swap_first(order: list[str]) -> list[str]:
    return [order[1], order[0], *order[2:]]


def _permutation(files: Sequence[str], shuffle_seed: int, epoch: int) -> list[str]:
    order = sorted(files)
    random.Random(order_key(shuffle_seed, epoch, "shards")).shuffle(order)
    return order


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
    """The seed of the row permutation of window ``index`` of ``epoch``."""
    return order_seed(shuffle_seed, epoch, "rows", index)


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
        epochs = list(range(first_position // n, (stop_position - 1) // n + 1))
        out = []
        for epoch, order in zip(epochs, epoch_orders(self.files, self.shuffle_seed, epochs), strict=True):
            base = epoch * n
            for w in epoch_windows(order, self.rows, epoch, self.window_rows):
                if base + w.last > first_position and base + w.first < stop_position:
                    out.append(w)
        return out
