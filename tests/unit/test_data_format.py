"""Shard schema, SDXL resize/crop conventions, epoch order, collate, local storage helpers (no Ray cluster)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ambient.data import collate_batch
from ambient.data.preprocess import Preprocess, resize_and_crop
from ambient.data.schema import arrow_schema, make_table
from ambient.data.streaming import epoch_order
from ambient.data.writer import SHARD_PATTERN, new_run_id, shard_name
from ambient.storage import (
    download_prefix,
    is_s3,
    list_files,
    read_text,
    resolve_filesystem,
    upload_directory,
    write_bytes_atomic,
)


def test_resize_shorter_side_then_center_crop():
    img = Image.new("RGB", (200, 100), (255, 0, 0))  # w=200, h=100
    pixels, original, crop = resize_and_crop(img, 64)
    assert pixels.shape == (3, 64, 64) and pixels.dtype == np.float32
    assert original == (100, 200)  # height first
    assert crop == (0, 32)  # resized to 128x64: left = (128 - 64) / 2
    assert np.allclose(pixels[0], 1.0) and np.allclose(pixels[1], -1.0)


def test_random_crop_is_frozen_by_seed_and_in_bounds():
    img = Image.new("RGB", (300, 100))
    crops = {resize_and_crop(img, 50, "random", crop_seed=s)[2] for s in range(20)}
    assert all(top == 0 and 0 <= left <= 100 for top, left in crops) and len(crops) > 5
    assert resize_and_crop(img, 50, "random", 3)[2] == resize_and_crop(img, 50, "random", 3)[2]


def test_preprocess_rejects_unreadable_bytes_with_a_reason():
    out = Preprocess(16, "center", 0)(
        {
            "id": np.array(["a", "b"], dtype=object),
            "caption": np.array(["x", "y"], dtype=object),
            "image": np.array([b"not an image", b""], dtype=object),
            "reject": np.array(["", "missing caption"], dtype=object),
        }
    )
    assert out["reject"][0].startswith("unreadable image") and out["reject"][1] == "missing caption"


def test_table_has_the_canonical_schema_and_round_trips(tmp_path):
    n, shape = 3, (4, 2, 2)
    table = make_table(
        "latent",
        ["a", "b", "c"],
        np.arange(n * 16, dtype=np.float32).reshape(n, *shape),
        np.array([0.0, 0.5, 1.0]),
        ["x", "y", "z"],
        np.array([[10, 20]] * n),
        np.array([[1, 2]] * n),
        noise_seed=5,
    )
    assert table.schema.equals(arrow_schema("latent", shape))
    pq.write_table(table, tmp_path / "s.parquet")
    back = pq.read_table(tmp_path / "s.parquet")
    assert back.column("latent").type.shape == shape
    assert back.column("latent").combine_chunks().to_numpy_ndarray().dtype == np.float16
    assert arrow_schema("image", (3, 8, 8)).names[1] == "image"


def test_collate_gives_torch_tensors_captions_and_ids():
    batch = {
        "id": np.array(["a", "b"], dtype=object),
        "latent": np.ones((2, 4, 2, 2), np.float16),
        "sigma_n": np.array([0.0, 0.5], np.float32),
        "caption": np.array(["c1", "c2"], dtype=object),
        "original_size_hw": np.array([[64, 32], [10, 20]], np.int32),
        "crop_top_left": np.array([[0, 1], [2, 3]], np.int32),
        "noise_seed": np.array([7, 7], np.int64),
    }
    out = collate_batch(batch)
    assert out["latent"].dtype == torch.float32 and out["latent"].shape == (2, 4, 2, 2)
    assert (
        out["original_size_hw"].tolist() == [[64, 32], [10, 20]] and out["crop_top_left"].dtype == torch.int64
    )
    assert out["captions"] == ["c1", "c2"] and out["ids"] == ["a", "b"]
    assert out["sigma_n"].tolist() == [0.0, 0.5]


def test_epoch_order_is_a_seeded_permutation_that_changes_every_epoch():
    files = [f"f{i}" for i in range(6)]
    orders = [epoch_order(files, 0, e) for e in range(10)]
    assert all(sorted(o) == files for o in orders)
    assert all(a != b for a, b in zip(orders, orders[1:], strict=False))
    assert epoch_order(files, 0, 3) == orders[3] and epoch_order(files, 1, 3) != orders[3]
    assert all(epoch_order(["a", "b"], 0, e) != epoch_order(["a", "b"], 0, e + 1) for e in range(5))


def test_local_storage_helpers(tmp_path):
    assert is_s3("s3://b/p") and not is_s3(str(tmp_path))
    target = str(tmp_path / "a" / "b.json")
    write_bytes_atomic(target, b'{"x": 1}')
    assert read_text(target) == '{"x": 1}' and list_files(str(tmp_path / "a")) == ["b.json"]
    with pytest.raises(FileNotFoundError):
        read_text(str(tmp_path / "missing.json"))
    src = tmp_path / "src"
    (src / "vae").mkdir(parents=True)
    (src / "vae" / "config.json").write_text("{}")
    upload_directory(src, str(tmp_path / "up"))
    got = download_prefix(str(tmp_path / "up"), tmp_path / "down")
    assert (got / "vae" / "config.json").read_text() == "{}"
    fs, path = resolve_filesystem("s3://bucket/prefix/x")
    assert path == "bucket/prefix/x" and fs.type_name == "s3"


def test_shard_names_match_the_pattern_cleanup_deletes_and_nothing_else():
    names = {shard_name(new_run_id()) for _ in range(20)}
    assert len(names) == 20 and all(SHARD_PATTERN.fullmatch(n) for n in names)
    name = next(iter(names))
    for other in ("shard-test-0.parquet", f"{name}.bak", f"x{name}", f"notes/{name}", "manifest.json"):
        assert not SHARD_PATTERN.fullmatch(other), other


def test_printed_summary_reports_the_stale_shard_cleanup(capsys):
    from ambient.data.report import print_summary

    summary = {"bytes": 2e6, "rows_written": 8, "shards": 2, "seconds": 1.0, "rows_per_s": 8.0}
    summary |= {"sigma_n": 0.5, "rows_rejected": 0}
    print_summary({**summary, "stale_shards": None})
    assert "stale" not in capsys.readouterr().out
    print_summary({**summary, "stale_shards": {"removed_files": 3, "removed_bytes": 1500000, "error": None}})
    assert "removed 3 stale shards of older runs (1.50 MB)" in capsys.readouterr().out
    print_summary({**summary, "stale_shards": {"removed_files": 1, "removed_bytes": 10, "error": "denied"}})
    out = capsys.readouterr().out
    assert "removed 1 stale shards" in out and "stale shards not all removed" in out and "denied" in out


def test_read_tasks_group_consecutive_files_by_bytes():
    from ambient.data.shard_source import group_by_bytes

    sizes = [3, 3, 3, 10, 1, 1]
    groups = group_by_bytes(sizes, min_task_bytes=5)
    assert groups == [[0, 1], [2, 3], [4, 5]]  # order kept, each file once, the remainder last
    assert [i for g in groups for i in g] == list(range(len(sizes)))
    assert group_by_bytes(sizes, min_task_bytes=1) == [[i] for i in range(6)]
    assert group_by_bytes(sizes, min_task_bytes=10**9) == [list(range(6))]
    assert group_by_bytes([], min_task_bytes=5) == []


def test_epoch_orders_for_many_epochs_equal_one_epoch_at_a_time():
    from ambient.data.streaming import epoch_order, epoch_orders

    for n in (1, 2, 3, 9):
        files = [f"shard-{i}.parquet" for i in range(n)]
        many = epoch_orders(files, 4, list(range(30)))
        assert many == [epoch_order(files, 4, e) for e in range(30)]
        assert epoch_orders(files, 4, [12, 3]) == [many[12], many[3]]
        if n >= 2:
            assert all(a != b for a, b in zip(many, many[1:], strict=False)), "epochs in a row differ"


def test_shard_and_row_orders_are_pinned():
    """A checkpoint's data_position names a place in these exact orders: a change of seeding would
    resume every existing run into a different stream."""
    from ambient.data.order import epoch_orders, order_key, window_permutation, window_seed

    files = [f"shard-{i:05d}.parquet" for i in range(5)]
    assert [[int(f[6:11]) for f in o] for o in epoch_orders(files, 0, [0, 1, 2])] == [
        [3, 2, 0, 4, 1],
        [2, 3, 0, 4, 1],
        [0, 2, 4, 3, 1],
    ]
    assert order_key(7, 2, "shards") == "ambient-shards:7:2"
    assert order_key(3, 1, "rows", 2) == "ambient-rows:3:1:2"
    assert window_seed(0, 0, 0) == 11808427009061392651
    assert window_permutation(7, 3, 1, 2, shuffle=True).tolist() == [5, 3, 1, 6, 4, 0, 2]
    assert window_permutation(4, 3, 1, 2, shuffle=False).tolist() == [0, 1, 2, 3]


def _text_batch(n: int, length: int = 77, dim: int = 64, pooled: int = 32) -> dict[str, np.ndarray]:
    """An encoder task's output with text embeddings; row 1 is rejected (zero placeholders)."""
    rng = np.random.default_rng(0)
    return {
        "id": np.array([f"r{i}" for i in range(n)], dtype=object),
        "reject": np.array(["" if i != 1 else "unreadable image" for i in range(n)], dtype=object),
        "caption": np.array([f"caption {i}" for i in range(n)], dtype=object),
        "tensor": rng.standard_normal((n, 4, 2, 2)).astype(np.float16),
        "original_size_hw": np.array([[64, 64]] * n, np.int32),
        "crop_top_left": np.array([[0, 0]] * n, np.int32),
        "prompt_embeds": rng.standard_normal((n, length, dim)).astype(np.float16),
        "pooled_prompt_embeds": rng.standard_normal((n, pooled)).astype(np.float16),
    }


def _commit(uri: str, reports: list[dict], empty_file: str):
    """The manifest a preparation with encode.text_embeddings commits for these writer reports."""
    from ambient.data.schema import SCHEMA_VERSION, Manifest, NoiseInfo, TextEmbeddingsInfo, utc_now
    from ambient.data.writer import fold_reports, write_manifest

    report = fold_reports([r["report"][0] for r in reports])
    manifest = Manifest(
        dataset_id="test",
        schema_version=SCHEMA_VERSION,
        complete=True,
        created_at=utc_now(),
        space="latent",
        tensor_shape=[4, 2, 2],
        resolution=16,
        num_rows=report.rows,
        num_shards=len(report.shards),
        shards=report.shards,
        sigma_n=report.sigma,
        noise=NoiseInfo(seed=0, sigma_n=0.5),
        text_embeddings=TextEmbeddingsInfo(
            model="tiny", sequence_length=77, prompt_dim=64, pooled_dim=32, empty_caption_file=empty_file
        ),
    )
    write_manifest(uri, manifest, None)
    return manifest


def test_rows_with_text_embeddings_round_trip_through_the_writer_and_reader(tmp_path):
    from ambient.data.holdout import read_rows
    from ambient.data.streaming import inspect_dataset
    from ambient.data.text import read_empty_caption, write_empty_caption
    from ambient.data.writer import ShardWriter, remove_stale_shards

    uri, run_id = str(tmp_path / "ds"), new_run_id()
    (tmp_path / "ds").mkdir()
    batch = _text_batch(4)
    written = ShardWriter(uri, None, run_id, "latent", 0.5, noise_seed=3)(batch)
    empty = np.full((77, 64), 0.25, np.float16), np.full(32, -1.0, np.float16)
    empty_file = write_empty_caption(uri, run_id, *empty, None)
    old_empty = write_empty_caption(uri, "20000101000000-0000abcd", *empty, None)  # an older run's
    manifest = _commit(uri, [written], empty_file)

    info = inspect_dataset(uri)  # validates every shard's columns and the empty-caption file
    assert dataset_schema_names(info) == [*arrow_schema("latent", (4, 2, 2)).names, *TEXT]
    rows = read_rows(uri, limit=10)  # the held-out reader: the kept rows, sorted by id, collated
    keep = [0, 2, 3]
    assert rows["ids"] == ["r0", "r2", "r3"]
    assert rows["prompt_embeds"].dtype == torch.float16 and rows["prompt_embeds"].shape == (3, 77, 64)
    assert np.array_equal(rows["prompt_embeds"].numpy(), batch["prompt_embeds"][keep])
    assert np.array_equal(rows["pooled_prompt_embeds"].numpy(), batch["pooled_prompt_embeds"][keep])
    got = read_empty_caption(uri, manifest)
    assert np.array_equal(got[0], empty[0]) and np.array_equal(got[1], empty[1])
    # The cleanup after the commit removes an older run's empty-caption file, never the manifest's.
    removed = remove_stale_shards(uri, {s.file for s in manifest.shards} | {empty_file}, None)
    assert removed.removed_files == 1 and not (tmp_path / "ds" / old_empty).exists()
    assert (tmp_path / "ds" / empty_file).exists()


TEXT = ["prompt_embeds", "pooled_prompt_embeds"]


def dataset_schema_names(info) -> list[str]:
    from ambient.data.schema import dataset_schema

    return dataset_schema(info.manifest).names


def test_validation_names_the_shard_and_the_text_column_of_the_wrong_shape(tmp_path):
    from ambient.data.errors import ShardError
    from ambient.data.streaming import inspect_dataset
    from ambient.data.text import write_empty_caption
    from ambient.data.writer import ShardWriter

    uri, run_id = str(tmp_path / "ds"), new_run_id()
    (tmp_path / "ds").mkdir()
    good = ShardWriter(uri, None, run_id, "latent", 0.5, noise_seed=3)(_text_batch(3))
    bad = ShardWriter(uri, None, run_id, "latent", 0.5, noise_seed=3)(_text_batch(3, dim=48))
    empty_file = write_empty_caption(uri, run_id, np.zeros((77, 64)), np.zeros(32), None)
    _commit(uri, [good, bad], empty_file)
    bad_file = json.loads(bad["report"][0])["file"]
    with pytest.raises(ShardError, match=rf"{bad_file}.*column prompt_embeds is .*shape=\(77, 48\)"):
        inspect_dataset(uri)
    (tmp_path / "ds" / empty_file).unlink()
    with pytest.raises(Exception, match=f"{empty_file}.*missing"):
        inspect_dataset(uri, skip_bad_shards=True)
