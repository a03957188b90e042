"""The run's row stream: rows move between epochs (bounded, seeded window shuffle), and ranks' shares
of it partition the stream exactly, from any resume position and for any world size."""

from __future__ import annotations

import pytest

from ambient.data import inspect_dataset, stream_epochs
from ambient.data.row_stream import RankSlice, StreamPlan, stream_ids
from ambient.data.streaming import epoch_order
from tests.helpers.datasets import ROWS, write_dataset

pytestmark = pytest.mark.integration
SHARDS = 4  # 24 rows per epoch; ROWS (6) per shard is a multiple of BATCH
BATCH = 3


@pytest.fixture
def info(ray_session, tmp_path):
    write_dataset(str(tmp_path / "ds"), shards=SHARDS)
    return inspect_dataset(str(tmp_path / "ds"))


def batches(ids: list[str]) -> list[frozenset[str]]:
    return [frozenset(ids[i : i + BATCH]) for i in range(0, len(ids), BATCH)]


def ids_of(ds) -> list[str]:
    ds.context.execution_options.preserve_order = True
    return [r["id"] for r in ds.iter_rows()]


def test_rows_move_between_epochs_so_batches_are_not_repeated(info):
    # With rows_per_shard a multiple of the batch, shuffling only the shard order would give every
    # epoch the same batches. The default stream also shuffles rows inside a window.
    ids = ids_of(stream_epochs(info, epochs=[0, 1], shuffle_seed=1))
    n = SHARDS * ROWS
    first, second = ids[:n], ids[n:]
    assert sorted(first) == sorted(second) == sorted(set(first))  # every row once per epoch
    shared = set(batches(first)) & set(batches(second))
    assert len(shared) <= 2, f"{len(shared)} of {n // BATCH} batches repeat in the next epoch"
    # Reproducible: the same seed gives the same stream, another seed another one.
    assert ids_of(stream_epochs(info, epochs=[0, 1], shuffle_seed=1)) == ids
    assert ids_of(stream_epochs(info, epochs=[0, 1], shuffle_seed=2)) != ids


def test_the_shuffle_window_is_bounded_to_consecutive_shards(info):
    # Windows of >= 12 rows = 2 shards: positions 0-11 hold exactly the rows of the epoch's first
    # two shards, in an order other than the files' own.
    ids = ids_of(stream_epochs(info, epochs=[0], shuffle_seed=4, window_rows=2 * ROWS))
    order = epoch_order(info.files, 4, 0)
    for w in range(SHARDS // 2):
        files = order[2 * w : 2 * w + 2]
        expected = {
            f"{f.replace('shard-test-', 'row-').removesuffix('.parquet')}-{i}"
            for f in files
            for i in range(ROWS)
        }
        window = ids[w * 2 * ROWS : (w + 1) * 2 * ROWS]
        assert set(window) == expected
    unshuffled = ids_of(stream_epochs(info, epochs=[0], shuffle_seed=4, window_rows=0))
    assert ids != unshuffled and sorted(ids) == sorted(unshuffled)


def interleave(shares: list[list[str]], batch: int) -> list[str]:
    """Rank shares back into stream order: micro-batch k is rank 0's k-th batch, rank 1's, ..."""
    out: list[str] = []
    k = 0
    while any(k * batch < len(s) for s in shares):
        for share in shares:
            out += share[k * batch : (k + 1) * batch]
        k += 1
    return out


def test_rank_shares_partition_the_stream_and_resume_at_any_position_and_world_size(info):
    plan = StreamPlan.from_info(info, shuffle_seed=7, window_rows=2 * ROWS)
    n = plan.epoch_rows
    whole = list(stream_ids(plan, RankSlice(start=0, stop=2 * n)))
    assert len(whole) == 2 * n
    # Two ranks, micro-batches of 3: 4 steps (24 rows = one epoch), then a resume at position 24
    # with three ranks for the second epoch.
    before = [list(stream_ids(plan, RankSlice(0, n, rank=r, world=2, batch=BATCH))) for r in range(2)]
    after = [list(stream_ids(plan, RankSlice(n, 2 * n, rank=r, world=3, batch=BATCH))) for r in range(3)]
    assert interleave(before, BATCH) == whole[:n]
    assert interleave(after, BATCH) == whole[n:]
    # A resume mid-epoch (position 12, after 2 steps of 2 x 3 rows) continues exactly there.
    resumed = [list(stream_ids(plan, RankSlice(12, n, rank=r, world=2, batch=BATCH))) for r in range(2)]
    assert interleave(resumed, BATCH) == whole[12:n]
    assert set(whole[:12]).isdisjoint(interleave(resumed, BATCH))
