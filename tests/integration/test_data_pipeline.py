"""prepare_shards end to end (synthetic, folder and Parquet sources, local and SeaweedFS S3) and streaming back."""

from __future__ import annotations

import io
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
from ambient.storage import list_files, resolve_filesystem
from ambient.synthetic import render_synthetic

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
    from ambient.storage import read_text

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
    # Only the manifest decides what is read; by default the rerun also removes the first run's shards
    # (tests/integration/test_data_cleanup.py covers the cleanup and the option that turns it off).
    dest = str(tmp_path / "ds")
    first = prepare_shards(config(dest, tiny_model, "source.count=16"))
    second = prepare_shards(
        config(dest, tiny_model, "source.count=8", "source.seed=1", "destination.overwrite=true")
    )
    assert set(list_files(dest, suffix=".parquet")) == {s.file for s in second.manifest.shards}
    assert second.summary["stale_shards"]["removed_files"] == len(first.manifest.shards) == 2
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


# --- Parquet source: image bytes + captions under a local or s3:// prefix ---------------------------

GOOD = {  # name: (size (w, h), format); PNG and JPEG, landscape, portrait and square
    "ok0.png": ((48, 40), "PNG"),
    "ok1.png": ((40, 56), "PNG"),
    "photo.jpg": ((64, 64), "JPEG"),
    "wide.jpeg": ((50, 36), "JPEG"),
}
BROKEN = b"\x89PNG\r\n\x1a\n this is not an image"


def _encoded_images() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for name, ((w, h), fmt) in GOOD.items():
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
        out[name] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def parquet_runs(ray_session, seaweedfs, tiny_model, tmp_path_factory):
    """The same images prepared three ways: a folder, Parquet on S3 (binary column, id column, two
    files, bad rows), and local Parquet in Hugging Face style (struct column, content-hash ids)."""
    import pyarrow as pa

    images = _encoded_images()
    root = tmp_path_factory.mktemp("parquet-source")
    folder = root / "images"
    folder.mkdir()
    for name, data in images.items():
        (folder / name).write_bytes(data)
        (folder / name).with_suffix(".txt").write_text(f"caption of {name}")

    good = [(name, data, f"caption of {name}") for name, data in images.items()]
    bad = [
        ("broken.png", BROKEN, "a broken file"),
        ("empty-caption.png", images["ok0.png"], ""),
        ("null-caption.png", images["ok1.png"], None),
        ("no-bytes.png", None, "caption without an image"),
        (None, images["photo.jpg"], "a row without an id"),
    ]
    rows = good[:2] + bad[:3] + good[2:] + bad[3:]  # good and bad rows in both files
    storage = seaweedfs.storage()
    s3_prefix = f"s3://{seaweedfs.bucket}/parquet-source/images"
    fs, path = resolve_filesystem(s3_prefix, storage)
    for part, chunk in enumerate((rows[:5], rows[5:])):
        table = pa.table(
            {
                "key": pa.array([r[0] for r in chunk], pa.string()),
                "jpg": pa.array([r[1] for r in chunk], pa.binary()),
                "txt": pa.array([r[2] for r in chunk], pa.string()),
            }
        )
        with fs.open_output_stream(f"{path}/part-{part}.parquet") as f:
            pq.write_table(table, f)
    with fs.open_output_stream(f"{path}/_SUCCESS") as f:  # a non-Parquet file in the prefix
        f.write(b"")

    hf = root / "hf"
    hf.mkdir()
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(
        pa.table(
            {
                "image": pa.array([{"bytes": d, "path": n} for n, d, _ in good], struct),
                "caption": [c for _, _, c in good],
            }
        ),
        hf / "train-00000.parquet",
    )

    def run(dest: str, *extra: str, cfg_storage=None):
        cfg = config(str(root / dest), tiny_model, *extra)
        if cfg_storage is not None:
            cfg = cfg.model_copy(update={"storage": cfg_storage})
        res = prepare_shards(cfg)
        return res, read_all(str(root / dest), None, [s.file for s in res.manifest.shards])

    return {
        "images": images,
        "folder": run("from-folder", "source.kind=folder", f"source.path={folder}"),
        "s3": run(
            "from-s3",
            "source.kind=parquet",
            f"source.path={s3_prefix}",
            "source.image_column=jpg",
            "source.caption_column=txt",
            "source.id_column=key",
            cfg_storage=storage,
        ),
        "hf": run("from-hf", "source.kind=parquet", f"source.path={hf}"),
    }


def test_parquet_source_from_s3_rejects_bad_rows_with_reasons(parquet_runs):
    res, table = parquet_runs["s3"]
    summary = res.summary
    assert summary["rows_written"] == len(GOOD) == table.num_rows == res.manifest.num_rows
    assert sorted(table.column("id").to_pylist()) == sorted(GOOD)
    assert summary["rows_rejected"] == 5
    assert summary["rejected_by_reason"] == {
        "missing caption": 2,
        "unreadable image": 1,
        "missing image bytes": 1,
        "missing id": 1,
    }
    reasons = {r["id"]: r["reason"] for r in summary["rejected"]}
    assert reasons["empty-caption.png"] == reasons["null-caption.png"] == "missing caption"
    assert reasons["broken.png"].startswith("unreadable image")
    assert reasons["no-bytes.png"] == "missing image bytes"
    assert res.manifest.source["path"].startswith("s3://") and res.manifest.source["id_column"] == "key"


def test_parquet_rows_equal_the_folder_source_rows(parquet_runs):
    (_, folder), (_, parquet) = parquet_runs["folder"], parquet_runs["s3"]
    assert folder.column("id").to_pylist() == parquet.column("id").to_pylist() == sorted(GOOD)
    assert parquet.column("caption").to_pylist() == [f"caption of {n}" for n in sorted(GOOD)]
    for col in ("sigma_n", "noise_seed"):
        assert folder.column(col).to_pylist() == parquet.column(col).to_pylist(), col
    for col in ("latent", "original_size_hw", "crop_top_left"):
        a = folder.column(col).combine_chunks().to_numpy_ndarray().astype(np.float32)
        b = parquet.column(col).combine_chunks().to_numpy_ndarray().astype(np.float32)
        np.testing.assert_allclose(a, b, atol=2e-3, err_msg=col)
    sizes = parquet.column("original_size_hw").combine_chunks().to_numpy_ndarray()
    assert [tuple(s) for s in sizes] == [GOOD[n][0][::-1] for n in sorted(GOOD)]


def test_parquet_struct_column_and_content_hash_ids(parquet_runs):
    import hashlib

    images = parquet_runs["images"]
    (_, folder), (res, hf) = parquet_runs["folder"], parquet_runs["hf"]
    sha = {"sha-" + hashlib.blake2b(images[n], digest_size=10).hexdigest(): n for n in GOOD}
    assert res.summary["rows_rejected"] == 0 and set(hf.column("id").to_pylist()) == set(sha)
    names = [sha[i] for i in hf.column("id").to_pylist()]
    assert hf.column("caption").to_pylist() == [f"caption of {n}" for n in names]
    # Same clean latents, different frozen noise: y_hf - y_folder = sigma (z(sha id) - z(file name)).
    by_name = dict(zip(folder.column("id").to_pylist(), range(folder.num_rows), strict=True))
    y_folder = folder.column("latent").combine_chunks().to_numpy_ndarray().astype(np.float32)
    y_folder = torch.from_numpy(y_folder[[by_name[n] for n in names]])
    y_hf = torch.from_numpy(hf.column("latent").combine_chunks().to_numpy_ndarray().astype(np.float32))
    shape = tuple(y_hf.shape[1:])
    expected = SIGMA * (
        frozen_noise(hf.column("id").to_pylist(), SEED, shape) - frozen_noise(names, SEED, shape)
    )
    torch.testing.assert_close(y_hf - y_folder, expected, atol=2e-2, rtol=0)
    assert (y_hf - y_folder).std().item() == pytest.approx(SIGMA * 2**0.5, rel=0.1)


def test_parquet_source_problems_fail_before_any_work(seaweedfs, tmp_path):
    from ambient.storage import StorageError

    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(
        __import__("pyarrow").table({"image": ["not bytes"], "caption": ["a caption"]}), src / "a.parquet"
    )
    dest = tmp_path / "out"

    def prepare(*extra: str, storage=None):
        cfg = load_config(
            PrepareShardsConfig,
            overrides=[f"destination.uri={dest}", "encode.space=image", "source.kind=parquet", *extra],
        )
        return prepare_shards(cfg.model_copy(update={"storage": storage or cfg.storage}))

    with pytest.raises(ValueError, match=r"source\.caption_column: .*a\.parquet has no column 'text'"):
        prepare(f"source.path={src}", "source.caption_column=text")
    with pytest.raises(
        ValueError, match=r"source\.id_column: .*no column 'key' \(its columns: image, caption\)"
    ):
        prepare(f"source.path={src}", "source.id_column=key")
    with pytest.raises(ValueError, match=r"source\.image_column: column 'image' is string; expected encoded"):
        prepare(f"source.path={src / 'a.parquet'}")
    with pytest.raises(FileNotFoundError, match=r"source\.path .*empty holds no \.parquet files"):
        prepare(f"source.path={tmp_path / 'empty'}")
    s3 = f"s3://{seaweedfs.bucket}/parquet-source/images"
    with pytest.raises(StorageError, match="access denied") as err:
        prepare(f"source.path={s3}", storage=seaweedfs.storage(secret_access_key="not-the-secret"))
    assert "not-the-secret" not in str(err.value)
    assert not (dest / "manifest.json").exists() and not list(dest.glob("shard-*"))
