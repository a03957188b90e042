"""Data path benchmark: Ray Data streaming from S3 (SeaweedFS) vs a direct pyarrow read, vs training.

All three are measured in one run on the same shards (DESIGN 6: ratios inside one run):

1. prepare demo latents with prepare_shards (synthetic shapes at 64 px, tiny-architecture VAE, x4 ->
   4x16x16 latents), written to a local SeaweedFS S3; then replicate the shards (new file names, same
   format) to reach --copies x --rows rows, so that fixed start-up costs do not dominate;
2. Ray Data: inspect_dataset once (validation, timed apart), then per epoch stream_epochs +
   iter_training_batches (torch tensors, the train loop's path);
3. direct: pyarrow reads the same files one by one from the same S3 and collates the same batches;
4. training: rows/s one worker consumes with the tiny SDXL-architecture UNet (forward + backward of
   the same batch size), or --train-rows-per-s.

    python benchmarks/data_throughput.py --json runs/bench/data_throughput.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from ambient.config import load_config
from ambient.data import (
    PrepareShardsConfig,
    collate_batch,
    inspect_dataset,
    iter_training_batches,
    prepare_shards,
    stream_epochs,
)
from ambient.data.local_s3 import start_local_s3
from ambient.data.schema import ShardEntry
from ambient.data.validate import load_manifest
from ambient.data.writer import write_manifest
from ambient.storage import resolve_filesystem


def build_model_folder(root: Path) -> Path:
    """The tiny default model's VAE architecture (random weights: throughput does not depend on them)."""
    from ambient.models.tiny import build_vae

    torch.manual_seed(0)
    build_vae(64).save_pretrained(root / "vae", safe_serialization=True)
    return root


def replicate(uri: str, storage, copies: int) -> int:
    """Copy every shard ``copies - 1`` more times under new names and list them all in a new manifest."""
    manifest = load_manifest(uri, storage)
    fs, root = resolve_filesystem(uri, storage)
    entries = list(manifest.shards)
    for c in range(1, copies):
        for shard in manifest.shards:
            name = f"shard-copy{c}-{uuid.uuid4().hex[:8]}.parquet"
            fs.copy_file(f"{root}/{shard.file}", f"{root}/{name}")
            entries.append(ShardEntry(file=name, rows=shard.rows, bytes=shard.bytes))
    rows = sum(e.rows for e in entries)
    write_manifest(
        uri,
        manifest.model_copy(update={"shards": entries, "num_shards": len(entries), "num_rows": rows}),
        storage,
    )
    return rows


def ray_read(info, storage, batch_size: int, epoch: int) -> tuple[int, float, float]:
    """(rows, seconds in all, rows/s after the first batch) for one epoch of the validated dataset, as
    the trainer streams it: the epoch's start-up (Ray Data planning, task launch) is in the first
    figure only. Validation happens once per run (``inspect_dataset``) and is timed separately."""
    start = time.perf_counter()
    ds = stream_epochs(info, storage, epochs=[epoch])
    n, first = 0, None
    for batch in iter_training_batches(ds, batch_size):
        if first is None:
            first = time.perf_counter()
            n0 = batch["latent"].shape[0]
        n += batch["latent"].shape[0]
    end = time.perf_counter()
    return n, end - start, (n - n0) / (end - first)


def ray_read_epochs(info, storage, batch_size: int, epochs: range) -> tuple[int, float]:
    """The trainer's own path: one streaming dataset over several epochs (start-up paid once)."""
    start = time.perf_counter()
    ds = stream_epochs(info, storage, epochs=epochs)
    n = sum(batch["latent"].shape[0] for batch in iter_training_batches(ds, batch_size))
    return n, time.perf_counter() - start


def direct_read(uri: str, storage, batch_size: int) -> tuple[int, float]:
    """The floor: one process, pyarrow file by file, the same collate into torch batches."""
    start = time.perf_counter()
    manifest = load_manifest(uri, storage)
    fs, root = resolve_filesystem(uri, storage)
    n = 0
    for shard in manifest.shards:
        with fs.open_input_file(f"{root}/{shard.file}") as f:
            table = pq.read_table(f)
        for lo in range(0, table.num_rows, batch_size):
            part = table.slice(lo, batch_size)
            batch = {
                name: (
                    part.column(name).combine_chunks().to_numpy_ndarray()
                    if name in ("latent", "original_size_hw", "crop_top_left")
                    else np.asarray(
                        part.column(name).to_pylist() if name in ("id", "caption") else part.column(name)
                    )
                )
                for name in part.column_names
            }
            n += collate_batch(batch)["latent"].shape[0]
    return n, time.perf_counter() - start


def train_rows_per_s(batch_size: int, steps: int = 5) -> float:
    """Forward + backward of the tiny SDXL-architecture UNet on one batch of 4x16x16 latents."""
    from ambient.models.tiny import build_unet

    torch.manual_seed(0)
    unet = build_unet(64)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 4, 16, 16)
    cond = {"text_embeds": torch.randn(batch_size, 32), "time_ids": torch.randn(batch_size, 6)}
    text = torch.randn(batch_size, 77, 64)
    t = torch.randint(0, 1000, (batch_size,))
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        out = unet(x, t, encoder_hidden_states=text, added_cond_kwargs=cond).sample
        out.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024, help="rows prepared through the pipeline")
    parser.add_argument("--copies", type=int, default=16, help="replicate the shards to copies x rows")
    parser.add_argument("--rows-per-shard", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-rows-per-s", type=float, default=None, help="skip the UNet measurement")
    parser.add_argument("--workdir", default="runs/bench/data_throughput")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    s3 = start_local_s3(bucket="bench", data_dir=work / f"s3-{uuid.uuid4().hex[:6]}")
    try:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        storage = s3.storage()
        uri = f"s3://{s3.bucket}/demo"
        cfg = load_config(
            PrepareShardsConfig,
            overrides=[
                f"destination.uri={uri}",
                f"source.count={args.rows}",
                "resolution=64",
                f"encode.model={build_model_folder(work / 'model')}",
                f"rows_per_shard={args.rows_per_shard}",
            ],
        ).model_copy(update={"storage": storage})
        prepared = prepare_shards(cfg)
        rows = replicate(uri, storage, args.copies)
        manifest = load_manifest(uri, storage)
        mb = sum(s.bytes for s in manifest.shards) / 1e6

        started = time.perf_counter()
        info = inspect_dataset(uri, storage)  # manifest + every shard's footer and sigma_n, once per run
        validate_s = time.perf_counter() - started
        ray_runs, ray_steady, direct_runs = [], [], []
        ray_read(info, storage, args.batch_size, epoch=99)  # warm-up: worker processes, S3 connections
        for r in range(args.repeats):  # interleaved, so drifts hit both alike
            n, secs, steady = ray_read(info, storage, args.batch_size, epoch=r)
            assert n == rows, (n, rows)
            ray_runs.append(n / secs)
            ray_steady.append(steady)
            n, secs = direct_read(uri, storage, args.batch_size)
            assert n == rows, (n, rows)
            direct_runs.append(n / secs)
        multi, multi_direct = [], []
        for r in range(2):  # the trainer's path: several epochs in one dataset, against as many direct reads
            n, secs = ray_read_epochs(info, storage, args.batch_size, range(100 + 10 * r, 100 + 10 * r + 3))
            assert n == 3 * rows, (n, rows)
            multi.append(n / secs)
            secs = sum(direct_read(uri, storage, args.batch_size)[1] for _ in range(3))
            multi_direct.append(3 * rows / secs)
        train = args.train_rows_per_s or train_rows_per_s(args.batch_size)
        ray_rps, direct_rps = statistics.median(ray_runs), statistics.median(direct_runs)
        result = {
            "rows": rows,
            "shards": manifest.num_shards,
            "megabytes": round(mb, 2),
            "row_shape": manifest.tensor_shape,
            "batch_size": args.batch_size,
            "prepare_rows_per_s": prepared.summary["rows_per_s"],
            "ray_data_rows_per_s": round(ray_rps, 1),
            "ray_data_steady_rows_per_s": round(statistics.median(ray_steady), 1),
            "validation_seconds": round(validate_s, 3),
            "ray_data_first_epoch_with_validation_rows_per_s": round(rows / (rows / ray_rps + validate_s), 1),
            "direct_pyarrow_rows_per_s": round(direct_rps, 1),
            "train_rows_per_s": round(train, 1),
            "train_measured": args.train_rows_per_s is None,
            "ray_vs_direct": round(ray_rps / direct_rps, 3),
            "ray_steady_vs_direct": round(statistics.median(ray_steady) / direct_rps, 3),
            "ray_vs_train": round(ray_rps / train, 1),
            "ray_3_epochs_rows_per_s": round(statistics.median(multi), 1),
            "direct_3_epochs_rows_per_s": round(statistics.median(multi_direct), 1),
            "ray_3_epochs_vs_direct": round(statistics.median(multi) / statistics.median(multi_direct), 3),
            "ray_data_runs": [round(x, 1) for x in ray_runs],
            "direct_runs": [round(x, 1) for x in direct_runs],
            "targets": {"ray_vs_direct": 0.8, "ray_vs_train": 20},
        }
    finally:
        if ray.is_initialized():
            ray.shutdown()
        s3.stop()
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
