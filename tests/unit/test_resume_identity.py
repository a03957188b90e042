"""train/resume.py: a checkpoint's data identity, the random state it carries, and a rank's share of it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import torch

from ambient.data.row_stream import StreamPlan
from ambient.train.resume import (
    DataIdentity,
    ResumeMismatchError,
    check_identity,
    needed_by,
    rank_checkpoint_dir,
    restore_rng,
    row_plan_sha256,
    save_rng,
)


def plan(uri: str = "s3://b/shards", rows: int = 8, seed: int = 0, window: int = 16) -> StreamPlan:
    files = ("shard-00000.parquet", "shard-00001.parquet")
    return StreamPlan(
        uri=uri,
        files=files,
        rows={files[0]: 8, files[1]: rows},
        bytes={f: 100 for f in files},
        schema=pa.schema([("id", pa.string())]),
        shuffle_seed=seed,
        window_rows=window,
    )


def test_row_plan_hash_follows_the_row_order_not_the_location():
    base = row_plan_sha256(plan(), "exact")
    assert row_plan_sha256(plan(uri="/data/copy"), "exact") == base  # a copied dataset keeps its plan
    for other in (plan(rows=7), plan(seed=1), plan(window=32)):
        assert row_plan_sha256(other, "exact") != base
    assert row_plan_sha256(None, "ray_split") != row_plan_sha256(None, "exact")


def test_a_resume_over_other_data_is_refused_naming_both_hashes():
    now = DataIdentity("a" * 64, "b" * 64)
    check_identity(now.to_dict(), now, "s3://runs/x/checkpoint_1")  # the same data: no error
    with pytest.raises(
        ResumeMismatchError, match=f"manifest_sha256 {'c' * 64} in the checkpoint, {'a' * 64}"
    ):
        check_identity({**now.to_dict(), "manifest_sha256": "c" * 64}, now, "ckpt")
    with pytest.raises(ResumeMismatchError, match="row plan"):
        check_identity({**now.to_dict(), "row_plan_sha256": "d" * 64}, now, "ckpt")
    with pytest.raises(ResumeMismatchError, match="records no dataset identity"):
        check_identity(None, now, "ckpt")


def test_restored_random_state_continues_the_same_draws(tmp_path):
    gen = torch.Generator().manual_seed(7)
    torch.randn(5, generator=gen)
    save_rng(tmp_path, 1, gen)
    expected, expected_global = torch.randn(4, generator=gen), torch.rand(3)

    fresh = torch.Generator().manual_seed(12345)  # a restarted worker's generator, seeded otherwise
    torch.manual_seed(999)
    assert restore_rng(tmp_path, 1, fresh)
    assert torch.equal(torch.randn(4, generator=fresh), expected)
    assert torch.equal(torch.rand(3), expected_global)
    assert not restore_rng(tmp_path, 0, fresh)  # no state for another rank


def test_a_rank_needs_the_shared_files_and_only_its_own_partition():
    shared = ["train_state.json", "ema.safetensors", "ds/mp_rank_00_model_states.pt", "ds/latest"]
    assert all(needed_by(f, 1) for f in shared)
    assert needed_by("ds/zero_pp_rank_1_mp_rank_00_optim_states.pt", 1)
    assert not needed_by("ds/zero_pp_rank_0_mp_rank_00_optim_states.pt", 1)
    assert not needed_by("ds/bf16_zero_pp_rank_10_mp_rank_00_optim_states.pt", 1)
    assert needed_by("rng/rank-1.safetensors", 1) and not needed_by("rng/rank-0.safetensors", 1)


def write_checkpoint(root: Path, world: int) -> None:
    (root / "ds").mkdir(parents=True)
    (root / "train_state.json").write_text("{}")
    (root / "ds" / "mp_rank_00_model_states.pt").write_bytes(b"m")
    for r in range(world):
        (root / "ds" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"o")
        (root / "rng").mkdir(exist_ok=True)
        (root / "rng" / f"rank-{r}.safetensors").write_bytes(b"r")


def test_a_remote_checkpoint_is_fetched_without_other_ranks_partitions(tmp_path):
    from ray.train import Checkpoint

    write_checkpoint(tmp_path / "store" / "ckpt", world=3)
    remote = pafs.SubTreeFileSystem(str(tmp_path / "store"), pafs.LocalFileSystem())  # not local: fetched
    checkpoint = Checkpoint("ckpt", filesystem=remote)
    with rank_checkpoint_dir(checkpoint, rank=1, world=3, saved_world=3) as folder:
        got = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert got == [
        "ds/mp_rank_00_model_states.pt",
        "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "rng/rank-1.safetensors",
        "train_state.json",
    ]
    # Another world size: DeepSpeed reads every partition, so all of them come.
    with rank_checkpoint_dir(checkpoint, rank=1, world=2, saved_world=3) as folder:
        assert len(list((Path(folder) / "ds").glob("zero_pp_rank_*"))) == 3
