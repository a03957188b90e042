"""prepare_shards end to end (synthetic and folder sources, local and SeaweedFS S3) and streaming back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ambient.config import load_config
from ambient.core import frozen_noise
from ambient.data import (
    NoValidRowsError,
    PrepareShardsConfig,
    iter_training_batches,
    open_dataset,
    prepare_shards,
)
from ambient.data.preprocess import resize_and_crop
from ambient.data.storage import list_files, resolve_filesystem
from ambient.data.synthetic import render_synthetic

pytestmark = pytest.mark.integration

COUNT, RES, SIGMA, SEED = 48, 32, 0.5, 7


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A diffusers model folder holding only a small random VAE (x2 downsampling, 4 channels)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=RES,
    )
    root = tmp_path_factory.mktemp("model")
    vae.save_pretrained(root / "vae", safe_serialization=True)
    return root


def config(dest: str, model: Path, *extra: str) -> PrepareShardsConfig:
    overrides = [
        f"destination.uri={dest}",
        f"source.count={COUNT}",
        f"resolution={RES}",
        f"encode.model={model}",
        f"noise.sigma_n={SIGMA}",
        f"noise.seed={SEED}",
        "encode.batch_size=16",
        "rows_per_shard=8",
        *extra,
    ]
    return load_config(PrepareShardsConfig, overrides=overrides)


@pytest.fixture(scope="module")
def prepared(ray_session, seaweedfs, tiny_model, tmp_path_factory):
    local = str(tmp_path_factory.mktemp("shards") / "ds")
    s3 = f"s3://{seaweedfs.bucket}/pipeline/ds"
    res_local = prepare_shards(config(local, tiny_model))
    cfg = config(s3, tiny_model).model_copy(update={"storage": seaweedfs.storage()})
    res_s3 = prepare_shards(cfg)
    return {"local": (local, res_local, None), "s3": (s3, res_s3, seaweedfs.storage())}


def read_all(uri: str, storage, files: list[str]):
    fs, root = resolve_filesystem(uri, storage)
    import pyarrow as pa

    tables = []
    for name in files:
        with fs.open_input_file(f"{root}/{name}") as f:
            tables.append(pq.read_table(f))
    table = pa.concat_tables(tables)
    order = np.argsort(np.array(table.column("id").to_pylist()))
    return table.take(order)


def clean_encodings(model: Path, ids: list[str]) -> torch.Tensor:
    """The clean latents, computed here from the source images (never read from the output)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval()
    pixels = []
    for row_id in ids:
        index = int(row_id.rsplit("-", 1)[1])
        item = render_synthetic(index, seed=0, size=RES)
        pixels.append(resize_and_crop(item.image, RES)[0])
    with torch.no_grad():
        mean = vae.encode(torch.from_numpy(np.stack(pixels))).latent_dist.mean
    return mean * vae.config.scaling_factor


def test_local_and_s3_hold_the_same_rows(prepared):
    (luri, lres, _), (suri, sres, sst) = prepared["local"], prepared["s3"]
    local = read_all(luri, None, [s.file for s in lres.manifest.shards])
    s3 = read_all(suri, sst, [s.file for s in sres.manifest.shards])
    assert local.num_rows == s3.num_rows == COUNT
    for col in ("id", "caption", "sigma_n", "noise_seed"):
        assert local.column(col).to_pylist() == s3.column(col).to_pylist(), col
    for col in ("latent", "original_size_hw", "crop_top_left"):
        a = local.column(col).combine_chunks().to_numpy_ndarray().astype(np.float32)
        b = s3.column(col).combine_chunks().to_numpy_ndarray().astype(np.float32)
        np.testing.assert_allclose(a, b, atol=2e-3, err_msg=col)
    assert local.column("latent").type.shape == (4, RES // 2, RES // 2)


def test_stored_latents_are_clean_plus_frozen_noise_of_sigma_n(prepared, tiny_model):
    uri, res, _ = prepared["local"]
    table = read_all(uri, None, [s.file for s in res.manifest.shards])
    ids = table.column("id").to_pylist()
    stored = torch.from_numpy(table.column("latent").combine_chunks().to_numpy_ndarray().astype(np.float32))
    clean = clean_encodings(tiny_model, ids)
    diff = stored - clean
    assert abs(diff.mean().item()) < 0.03
    assert diff.std().item() == pytest.approx(SIGMA, rel=0.05)
    # Exactly the frozen per-sample noise of (id, seed), up to float16 rounding.
    expected = SIGMA * frozen_noise(ids, SEED, tuple(stored.shape[1:]))
    torch.testing.assert_close(diff, expected, atol=2e-2, rtol=0)
    assert np.allclose(table.column("sigma_n").to_numpy(), SIGMA)


def test_no_clean_latent_anywhere_in_the_output(prepared, tiny_model):
    uri, _, _ = prepared["local"]
    names = list_files(uri)
    assert set(names) >= {"manifest.json", "summary.json"}
    shards = [n for n in names if n.endswith(".parquet")]
    assert set(n for n in names if n not in shards) == {"manifest.json", "summary.json"}
    for name in shards:
        table = pq.read_table(Path(uri) / name)
        ids = table.column("id").to_pylist()
        clean = clean_encodings(tiny_model, ids).numpy()
        for col in table.column_names:
            values = table.column(col).combine_chunks()
            if not hasattr(values.type, "shape") or tuple(values.type.shape) != clean.shape[1:]:
                continue
            arr = values.to_numpy_ndarray().astype(np.float32)
            rms = np.sqrt(((arr - clean) ** 2).mean(axis=(1, 2, 3)))
            assert rms.min() > 0.5 * SIGMA, f"{name}:{col} holds a latent too close to a clean encoding"


def test_manifest_and_summary(prepared):
    uri, res, _ = prepared["local"]
    manifest = json.loads((Path(uri) / "manifest.json").read_text())
    summary = json.loads((Path(uri) / "summary.json").read_text())
    assert manifest["complete"] and manifest["schema_version"] == 1
    assert manifest["num_rows"] == COUNT == sum(s["rows"] for s in manifest["shards"])
    assert manifest["num_shards"] == len(manifest["shards"]) == COUNT // 8
    assert all(res.manifest.dataset_id in s["file"] for s in manifest["shards"])
    assert manifest["sigma_n"] == {"min": SIGMA, "max": SIGMA, "mean": SIGMA, "clean_rows": 0}
    assert manifest["noise"]["seed"] == SEED and manifest["resolution"] == RES
    assert manifest["vae"]["downsample_factor"] == 2 and manifest["vae"]["weights_sha256"]
    assert summary["rows_written"] == COUNT and summary["rows_rejected"] == 0
    assert summary["bytes"] == sum(s["bytes"] for s in manifest["shards"]) > 0
    assert summary["rows_per_s"] > 0


def test_s3_secrets_are_never_written(prepared, seaweedfs):
    uri, _, storage = prepared["s3"]
    from ambient.data.storage import read_text

    for name in ("manifest.json", "summary.json"):
        text = read_text(f"{uri}/{name}", storage)
        assert seaweedfs.secret_access_key not in text and seaweedfs.access_key_id not in text


@pytest.mark.parametrize("where", ["local", "s3"])
def test_streaming_yields_every_row_once_per_epoch_in_a_new_file_order(prepared, where):
    uri, res, storage = prepared[where]
    orders = []
    for epoch in (0, 1):
        ds, info = open_dataset(uri, storage, epoch=epoch, shuffle_seed=3, expected_latent_shape=(4, 16, 16))
        ds.context.execution_options.preserve_order = True
        ids, first_of_file = [], []
        for batch in iter_training_batches(ds, batch_size=8):
            assert batch["latent"].dtype == torch.float32 and batch["latent"].shape[1:] == (4, 16, 16)
            assert batch["sigma_n"].shape == (len(batch["ids"]),)
            assert batch["original_size_hw"].shape == (len(batch["ids"]), 2)
            assert all(isinstance(c, str) and c for c in batch["captions"])
            ids += batch["ids"]
            first_of_file.append(batch["ids"][0])
        assert sorted(ids) == sorted(set(ids)) and len(ids) == COUNT == info.rows
        assert info.counts() == {"rows": COUNT, "rows_skipped": 0, "shards_skipped": 0}
        orders.append((info.files, ids))
    assert orders[0][0] != orders[1][0]  # the planned file order differs...
    assert orders[0][1] != orders[1][1]  # ...and so does the order rows arrive in


def test_rerun_into_the_same_folder_never_mixes_runs(ray_session, tiny_model, tmp_path):
    dest = str(tmp_path / "ds")
    first = prepare_shards(config(dest, tiny_model, "source.count=16"))
    second = prepare_shards(config(dest, tiny_model, "source.count=8", "source.seed=1"))
    assert len(list_files(dest, suffix=".parquet")) == len(first.manifest.shards) + len(
        second.manifest.shards
    )
    ds, info = open_dataset(dest)
    ids = [row["id"] for row in ds.iter_rows()]
    assert info.manifest.dataset_id == second.manifest.dataset_id
    assert len(ids) == 8 and all(i.startswith("synthetic-1-") for i in ids)


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int]) -> None:
    from PIL import Image

    Image.new("RGB", size, color).save(path)


def test_folder_source_rejects_bad_rows_with_reasons(ray_session, tiny_model, tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    for i in range(3):
        _png(src / f"ok{i}.png", (40 * i, 90, 200), (48, 40))  # landscape: resize + center crop
        (src / f"ok{i}.txt").write_text(f"image number {i}\n")
    _png(src / "nocaption.png", (1, 2, 3), (32, 32))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (src / "broken.txt").write_text("a broken file")
    _png(src / "sub.jpg", (9, 9, 9), (64, 64))
    (src / "captions.jsonl").write_text(json.dumps({"file": "sub.jpg", "caption": "from jsonl"}) + "\n")

    dest = tmp_path / "out"
    res = prepare_shards(config(str(dest), tiny_model, "source.kind=folder", f"source.path={src}"))
    summary = json.loads((dest / "summary.json").read_text())
    assert summary["rows_written"] == 4 and summary["rows_rejected"] == 2
    reasons = {r["id"]: r["reason"] for r in summary["rejected"]}
    assert reasons["nocaption.png"] == "missing caption"
    assert reasons["broken.png"].startswith("unreadable image")
    assert summary["rejected_by_reason"] == {"missing caption": 1, "unreadable image": 1}
    table = read_all(str(dest), None, [s.file for s in res.manifest.shards])
    rows = {r["id"]: r for r in table.to_pylist()}
    assert set(rows) == {"ok0.png", "ok1.png", "ok2.png", "sub.jpg"}
    assert rows["sub.jpg"]["caption"] == "from jsonl" and rows["ok1.png"]["caption"] == "image number 1"
    # 48x40 -> shorter side to 32: 38x32, center crop: left = round(6 / 2) = 3.
    assert list(rows["ok0.png"]["original_size_hw"]) == [40, 48]
    assert list(rows["ok0.png"]["crop_top_left"]) == [0, 3]


def test_fails_clearly_when_nothing_valid_remains(ray_session, tiny_model, tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    (src / "a.png").write_bytes(b"garbage")
    (src / "a.txt").write_text("caption")
    _png(src / "b.png", (1, 2, 3), (16, 16))
    with pytest.raises(NoValidRowsError, match=r"no valid rows to write .*: all 2 rejected") as err:
        prepare_shards(config(str(tmp_path / "out"), tiny_model, "source.kind=folder", f"source.path={src}"))
    assert "missing caption: 1" in str(err.value) and "unreadable image: 1" in str(err.value)
    assert not (tmp_path / "out" / "manifest.json").exists()
