"""The driver: validate, resolve the model and data, assemble Ray Train + DeepSpeed, write the summary."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.data
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from ambient.config import redacted
from ambient.data.config import DestinationConfig, EncodeConfig, PrepareShardsConfig
from ambient.data.row_stream import StreamPlan
from ambient.data.schema import MANIFEST_NAME
from ambient.data.storage import exists, is_s3, join, read_text, resolve_filesystem, write_bytes_atomic
from ambient.data.streaming import DatasetInfo, inspect_dataset, stream_epochs
from ambient.data.validate import load_manifest
from ambient.ray_init import init_ray

from .config import FinetuneConfig
from .loop import train_loop_per_worker
from .model_source import check_model_source
from .plan import RunPlan

SUMMARY_NAME = "summary.json"


def _log(message: str) -> None:
    print(f"[ambient finetune] {message}", flush=True)


def resolve_model(cfg: FinetuneConfig) -> str:
    if cfg.model.path:
        check_model_source(cfg.model.path, cfg.storage.resolved())
        return cfg.model.path
    from ambient.models.vae_pretrain import ensure_default_model

    return str(ensure_default_model())


def ensure_demo_shards(cfg: FinetuneConfig, model_source: str) -> None:
    """Create the synthetic demo shards at a local data.uri that has no dataset yet."""
    storage = cfg.storage.resolved()
    if exists(join(cfg.data.uri, MANIFEST_NAME), storage):
        return
    if not cfg.data.prepare_if_missing or is_s3(cfg.data.uri):
        raise FileNotFoundError(
            f"data.uri {cfg.data.uri} holds no dataset ({MANIFEST_NAME} missing); run jobs/prepare_shards.py first"
        )
    from ambient.data.prepare import prepare_shards

    _log(f"no dataset at {cfg.data.uri}: preparing the synthetic demo shards")
    prepare_shards(
        PrepareShardsConfig(
            destination=DestinationConfig(uri=cfg.data.uri),
            encode=EncodeConfig(model=model_source),
            storage=cfg.storage,
        )
    )


def _storage_filesystem(cfg: FinetuneConfig):
    if not is_s3(cfg.run.storage_path):
        return None, str(Path(cfg.run.storage_path).absolute())
    fs, path = resolve_filesystem(cfg.run.storage_path, cfg.storage.resolved())
    return fs, path


@dataclass
class PreparedRun:
    """Everything resolved on the driver before the workers start."""

    plan: RunPlan
    train_ds: ray.data.Dataset | None  # data.split ray_split: the dataset Ray Train splits
    stream: StreamPlan | None  # data.split exact: each worker streams its own share of this plan
    data_counts: dict


def checked_dataset(cfg: FinetuneConfig, storage) -> DatasetInfo:
    """Validate the shards once, here on the driver, and check there are enough rows for a step."""
    info = inspect_dataset(cfg.data.uri, storage, skip_bad_shards=cfg.data.skip_bad_shards)
    if info.manifest.tensor_column != "latent":
        raise ValueError(f"data.uri {cfg.data.uri} is a pixel-space dataset; fine-tuning SDXL needs latents")
    workers, batch = cfg.scaling.num_workers, cfg.train.batch_size
    if info.rows // workers < batch:
        raise ValueError(
            f"data.uri {cfg.data.uri} has {info.rows} usable rows: too few for {workers} workers x "
            f"train.batch_size {batch}"
        )
    return info


def streaming_epochs(cfg: FinetuneConfig, storage, info: DatasetInfo) -> ray.data.Dataset:
    """data.split ray_split: one streaming dataset over all planned epochs, for Ray Train to split."""
    workers, batch, accum = cfg.scaling.num_workers, cfg.train.batch_size, cfg.optim.grad_accum
    per_worker_rows = info.rows // workers
    epochs = math.ceil(cfg.train.max_steps * accum / (per_worker_rows // batch)) + 1
    return stream_epochs(
        info,
        storage,
        epochs=range(epochs),
        shuffle_seed=cfg.data.shuffle_seed,
        window_rows=cfg.data.shuffle_window_rows,
    )


def prepare_run(cfg: FinetuneConfig, model_source: str) -> PreparedRun:
    """Validate the data and plan the run (Ray must be initialised; ``model_source`` from resolve_model)."""
    storage = cfg.storage.resolved()
    ensure_demo_shards(cfg, model_source)
    if cfg.validation.data_uri:
        load_manifest(cfg.validation.data_uri, storage)  # a missing held-out set fails here, not in a worker
    info = checked_dataset(cfg, storage)
    exact = cfg.data.split == "exact"
    train_ds = None if exact else streaming_epochs(cfg, storage, info)
    stream = (
        StreamPlan.from_info(info, cfg.data.shuffle_seed, cfg.data.shuffle_window_rows) if exact else None
    )
    manifest = info.manifest
    sigma_n = (
        manifest.noise.sigma_n
        if cfg.loss.sigma_train is None
        else max(cfg.loss.sigma_train, manifest.noise.sigma_n)
    )
    mode = cfg.validation.mode
    if mode == "auto":
        mode = "full" if cfg.consistency.weight > 0 or sigma_n == 0 else "early_stop"
    outputs_uri = join(join(cfg.run.storage_path, cfg.run.name), "outputs")
    plan = RunPlan(
        model_source=model_source,
        prediction_type=_read_scheduler_config(model_source, storage).get("prediction_type", "epsilon"),
        data_uri=cfg.data.uri,
        sigma_n=float(sigma_n),
        sampling_mode=mode,
        resolution=manifest.resolution,
        outputs_uri=outputs_uri if is_s3(outputs_uri) else str(Path(outputs_uri).absolute()),
        data_split=cfg.data.split,
    )
    _log(
        f"run {cfg.run.name}: {cfg.scaling.num_workers} workers x batch {cfg.train.batch_size} x accum "
        f"{cfg.optim.grad_accum}, {cfg.train.max_steps} steps, {info.rows} rows ({info.rows_skipped} skipped), "
        f"sigma_n {sigma_n:.3g}, sampling {mode}, ZeRO-{cfg.deepspeed.zero_stage} {cfg.deepspeed.precision}"
    )
    return PreparedRun(plan=plan, train_ds=train_ds, stream=stream, data_counts=info.counts())


def build_trainer(cfg: FinetuneConfig, prepared: PreparedRun, callbacks: list | None = None) -> TorchTrainer:
    fs, storage_path = _storage_filesystem(cfg)
    gpu = {"GPU": 1} if cfg.scaling.use_gpu else {}
    return TorchTrainer(
        train_loop_per_worker,
        # Storage resolved here, on the driver: workers on other nodes may lack its AWS_* environment.
        train_loop_config={
            "finetune": cfg.model_copy(update={"storage": cfg.storage.resolved()}).model_dump(),
            "plan": prepared.plan.__dict__,
            "stream": prepared.stream,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={
                "CPU": cfg.scaling.cpus_per_worker,
                **gpu,
                **cfg.scaling.resources_per_worker,
            },
            placement_strategy=cfg.scaling.placement_strategy,
        ),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=storage_path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=callbacks or None,
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        datasets={"train": prepared.train_ds} if prepared.train_ds is not None else None,
    )


def run_finetune(cfg: FinetuneConfig, callbacks: list | None = None) -> str:
    """Run (or resume) the fine-tuning job described by ``cfg``; returns the summary.json path/URI.

    A rerun with the same run.name and run.storage_path resumes from the latest checkpoint.
    """
    started = time.time()
    model_source = resolve_model(cfg)  # a missing model fails here, before any cluster work
    init_ray(cfg.run.ray_address, cfg.scaling.num_workers * cfg.scaling.cpus_per_worker)
    prepared = prepare_run(cfg, model_source)
    result = build_trainer(cfg, prepared, callbacks).fit()
    if result.error is not None:
        raise result.error
    plan = prepared.plan
    summary_uri = write_summary(cfg, plan, prepared.data_counts, result, started)
    _log(f"exported model: {join(plan.outputs_uri, 'model')}")
    _log(f"sample grids:   {join(plan.outputs_uri, 'samples')}")
    _log(f"loss curve:     {join(plan.outputs_uri, 'loss_curve.png')}")
    _log(f"summary:        {summary_uri}")
    return summary_uri


def _read_scheduler_config(model_source: str, storage) -> dict:
    path = join(model_source, "scheduler/scheduler_config.json")
    try:
        text = read_text(path, storage) if is_s3(model_source) else Path(path).read_text()
    except (OSError, FileNotFoundError) as exc:
        raise FileNotFoundError(
            f"model {model_source}: scheduler/scheduler_config.json unreadable ({exc})"
        ) from None
    return json.loads(text)


def checkpoint_uri(cfg: FinetuneConfig, path: str) -> str:
    """Ray reports checkpoint paths inside the storage filesystem ("bucket/prefix/..." on S3): give
    them back their scheme so a later job can open them."""
    return f"s3://{path.lstrip('/')}" if is_s3(cfg.run.storage_path) and not is_s3(path) else path


def write_summary(cfg: FinetuneConfig, plan: RunPlan, data_counts: dict, result, started: float) -> str:
    storage = cfg.storage.resolved()
    worker = json.loads(read_text(join(plan.outputs_uri, "worker_summary.json"), storage))
    history = worker.get("history", [])
    last = history[-1] if history else {}
    checkpoints = [checkpoint_uri(cfg, c.path) for c, _ in (result.best_checkpoints or [])]
    summary = {
        "run": cfg.run.name,
        "status": "completed",
        "steps": worker["steps"],
        "resumed_from_step": worker.get("resumed_from_step"),
        "restarts": len(worker.get("resumes", [])),
        "resumed_from_steps": worker.get("resumes", []),
        "data_split": plan.data_split,
        "data_position": worker.get("data_position"),
        "images_seen": worker["images_seen"],
        "final_loss": last.get("loss"),
        "final_ambient_loss": last.get("ambient"),
        "final_consistency_loss": next(
            (h["consistency"] for h in reversed(history) if h.get("consistency") is not None), None
        ),
        "final_val_ambient_loss": next(
            (h["val_ambient"] for h in reversed(history) if h.get("val_ambient") is not None), None
        ),
        "first_loss": history[0]["loss"] if history else None,
        "images_per_second": worker.get("images_per_second"),
        "data_wait_fraction": worker.get("data_wait_fraction"),
        "sigma_n": plan.sigma_n,
        "sampling_mode": plan.sampling_mode,
        "data": {"uri": plan.data_uri, **data_counts},
        "model_source": plan.model_source,
        "outputs": plan.outputs_uri,
        "exported_model": join(plan.outputs_uri, "model"),
        "loss_curve": join(plan.outputs_uri, "loss_curve.png"),
        "sample_grids": join(plan.outputs_uri, "samples"),
        "latest_checkpoint": checkpoint_uri(cfg, result.checkpoint.path) if result.checkpoint else None,
        "checkpoints": checkpoints,
        "wall_seconds": round(time.time() - started, 1),
        "history": history,
        "config": redacted(cfg),
    }
    uri = join(plan.outputs_uri, SUMMARY_NAME)
    write_bytes_atomic(uri, json.dumps(summary, indent=2, default=str).encode(), storage)
    return uri
