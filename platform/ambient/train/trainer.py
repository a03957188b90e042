"""The driver: validate, resolve the model and data, assemble Ray Train + DeepSpeed, write the summary."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.data
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from ambient.config import absolute_path, redacted
from ambient.core import default_sampling_mode, resolve_sampling_mode
from ambient.data.config import DestinationConfig, EncodeConfig, PrepareShardsConfig, SourceConfig
from ambient.data.encode import describe_vae, downsample_factor, vae_config, vae_differences, vae_identity
from ambient.data.errors import ManifestError, VaeMismatchError
from ambient.data.row_stream import StreamPlan
from ambient.data.schema import MANIFEST_NAME, SUMMARY_NAME, Manifest
from ambient.data.streaming import DatasetInfo, inspect_dataset, stream_epochs
from ambient.data.text import read_empty_caption
from ambient.data.validate import load_manifest
from ambient.models.conditioning import TextEmbeddings
from ambient.models.source import check_model
from ambient.ray_init import init_ray
from ambient.storage import exists, is_s3, join, read_text, resolve_filesystem, write_bytes_atomic

from .config import DEMO_DATA_URI, FinetuneConfig
from .loop import train_loop_per_worker
from .plan import RunPlan, StoredText
from .records import WORKER_SUMMARY, RunSummary, WorkerSummary


def _log(message: str) -> None:
    print(f"[ambient finetune] {message}", flush=True)


def resolve_model(cfg: FinetuneConfig) -> str:
    """model.path checked (not downloaded: each worker fetches an s3:// model itself), or the default."""
    return check_model(cfg.model.path or None, cfg.storage.resolved(), field="model.path")


def is_demo_data_uri(uri: str) -> bool:
    """Whether ``uri`` is the demo's own dataset path, runs/demo/shards under the caller's directory."""
    return not is_s3(uri) and absolute_path(uri) == absolute_path(DEMO_DATA_URI)


def check_training_data(cfg: FinetuneConfig) -> bool:
    """Before any cluster work: True when data.uri is the demo's own path without a dataset yet (to be
    prepared); raises naming data.uri when any other location holds no dataset."""
    if exists(join(cfg.data.uri, MANIFEST_NAME), cfg.storage.resolved()):
        return False
    if cfg.data.prepare_if_missing and is_demo_data_uri(cfg.data.uri):
        return True
    demo = (
        f"; only the demo's own {DEMO_DATA_URI} is prepared automatically"
        if cfg.data.prepare_if_missing
        else ""
    )
    raise FileNotFoundError(
        f"data.uri {cfg.data.uri} holds no dataset ({MANIFEST_NAME} missing): check the path, or run "
        f"jobs/prepare_shards.py with destination.uri={cfg.data.uri} first{demo}"
    )


def check_validation_data(cfg: FinetuneConfig, field: str = "validation.data_uri") -> None:
    """Before any cluster work: the held-out set, when given, is a dataset (error names the field)."""
    if cfg.validation.data_uri:
        try:
            load_manifest(cfg.validation.data_uri, cfg.storage.resolved())
        except ManifestError as err:
            raise ManifestError(f"{field}: {err}") from None


# What jobs/configs/prepare_demo.yaml writes (a unit test keeps the two equal): a shape the default base
# model never drew, with a quarter of the base's own world mixed in (rehearsal).
DEMO_SOURCE = SourceConfig(kind="synthetic", world="cross", count=512, replay_world="base", replay_share=0.25)


def ensure_demo_shards(cfg: FinetuneConfig, model_source: str) -> None:
    """Create the synthetic demo shards at the demo's own data.uri when it holds no dataset yet."""
    if not check_training_data(cfg):
        return
    from ambient.data.prepare import prepare_shards

    _log(f"no dataset at {cfg.data.uri}: preparing the synthetic demo shards (noisy crosses)")
    prepare_shards(
        PrepareShardsConfig(
            source=DEMO_SOURCE,
            rows_per_shard=64,
            destination=DestinationConfig(uri=cfg.data.uri),
            encode=EncodeConfig(model=model_source),
            storage=cfg.storage,
        )
    )


def check_dataset_vae(cfg: FinetuneConfig, model_source: str) -> None:
    """The shards must have been encoded by the model's VAE: sigma_n is a noise level in that VAE's
    scaled latent space, so another VAE or scaling factor would train at the wrong level, silently.
    Runs on the driver before Ray starts; a dataset still to be prepared is encoded by this model."""
    storage = cfg.storage.resolved()
    if not exists(join(cfg.data.uri, MANIFEST_NAME), storage):
        return
    manifest = load_manifest(cfg.data.uri, storage)
    if manifest.space != "latent":
        return  # refused with its own message by streaming_epochs
    loaded = vae_identity(model_source, storage)
    differences = vae_differences(manifest.vae, loaded)
    if not differences:
        return
    message = (
        f"data.uri {cfg.data.uri} was encoded by another VAE than model {model_source}'s "
        f"({', '.join(differences)} differ): dataset {describe_vae(manifest.vae)}; model {describe_vae(loaded)}. "
        "sigma_n is defined in the encoding VAE's scaled latent space: prepare the shards with "
        "encode.model set to this model, or set data.allow_vae_mismatch=true for a deliberately shared VAE"
    )
    if not cfg.data.allow_vae_mismatch:
        raise VaeMismatchError(message)
    _log(f"warning (data.allow_vae_mismatch): {message}")


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
    text: StoredText | None = None  # the dataset carries text embeddings: no worker loads text encoders


def expected_latent_shape(model_source: str, resolution: int, storage) -> tuple[int, int, int]:
    """(C, H, W) of the latents the model's VAE makes at ``resolution`` pixels."""
    config = vae_config(model_source, storage)
    side = resolution // downsample_factor(config)
    return (int(config["latent_channels"]), side, side)


def checked_dataset(cfg: FinetuneConfig, storage, model_source: str | None = None) -> DatasetInfo:
    """Validate the shards once, here on the driver (against the latent shape of ``model_source``'s VAE),
    and check there are enough rows for a step."""
    expected = None
    if model_source is not None:
        manifest = load_manifest(cfg.data.uri, storage)
        if manifest.space == "latent":
            expected = expected_latent_shape(model_source, manifest.resolution, storage)
    info = inspect_dataset(
        cfg.data.uri, storage, skip_bad_shards=cfg.data.skip_bad_shards, expected_latent_shape=expected
    )
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


def check_stored_text(cfg: FinetuneConfig, manifest: Manifest, model_source: str, storage) -> None:
    """A dataset with text embeddings: they fit the model's UNet, and the held-out set carries them
    too (the workers load no text encoders to embed its captions)."""
    info = manifest.text_embeddings
    try:
        unet = json.loads(read_text(join(model_source, "unet", "config.json"), storage))
    except FileNotFoundError:
        unet = {}  # an adapter export: its base's UNet is checked when it is loaded
    width = unet.get("cross_attention_dim")
    if width is not None and int(width) != info.prompt_dim:
        raise ValueError(
            f"data.uri {cfg.data.uri} carries text embeddings of width {info.prompt_dim} (from "
            f"{info.model}); model {model_source}'s UNet takes {width}: prepare the shards with "
            "encode.model set to this model"
        )
    if not cfg.validation.data_uri:
        return
    held_out = load_manifest(cfg.validation.data_uri, storage).text_embeddings
    if held_out is None or held_out.columns() != info.columns():
        found = "no text embeddings" if held_out is None else f"text embeddings of shape {held_out.columns()}"
        raise ManifestError(
            f"validation.data_uri {cfg.validation.data_uri} carries {found}, while data.uri {cfg.data.uri} "
            f"carries text embeddings of shape {info.columns()}: a run on stored embeddings loads no text "
            "encoders, so prepare the held-out set with encode.text_embeddings: true and the same encode.model"
        )


def stored_text(cfg: FinetuneConfig, info: DatasetInfo, model_source: str, storage) -> StoredText | None:
    """The empty-caption embedding of a dataset that carries text embeddings, and the embeddings of
    validation.prompts, computed once here (in a Ray task, with the code that embeds the dataset)."""
    if info.manifest.text_embeddings is None:
        return None
    from ambient.data.encode import embed_on_cluster

    check_stored_text(cfg, info.manifest, model_source, storage)
    empty = read_empty_caption(info.uri, info.manifest, storage)
    gpus = 1.0 if cfg.scaling.use_gpu and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    prompts = embed_on_cluster(model_source, storage, list(cfg.validation.prompts), num_gpus=gpus)
    return StoredText(
        empty_caption=_embeddings(empty[0][None], empty[1][None]),
        prompts=_embeddings(*prompts),
    )


def _embeddings(prompt_embeds, pooled) -> TextEmbeddings:
    return TextEmbeddings(torch.from_numpy(prompt_embeds.copy()), torch.from_numpy(pooled.copy()))


def training_sigma_n(cfg: FinetuneConfig, data_sigma_n: float) -> float:
    """The level the model is trained at: the data's, raised to loss.sigma_train, or 0 for the naive
    baseline (loss.data_noise 'ignored')."""
    if cfg.loss.data_noise == "ignored":
        return 0.0
    if cfg.loss.sigma_train is None:
        return data_sigma_n
    return max(cfg.loss.sigma_train, data_sigma_n)


def prepare_run(cfg: FinetuneConfig, model_source: str) -> PreparedRun:
    """Validate the data and plan the run (Ray must be initialised; ``model_source`` from resolve_model)."""
    storage = cfg.storage.resolved()
    check_validation_data(cfg)  # a missing held-out set fails here, not in a worker
    info = checked_dataset(cfg, storage, model_source)
    exact = cfg.data.split == "exact"
    train_ds = None if exact else streaming_epochs(cfg, storage, info)
    stream = (
        StreamPlan.from_info(info, cfg.data.shuffle_seed, cfg.data.shuffle_window_rows) if exact else None
    )
    manifest = info.manifest
    sigma_n = training_sigma_n(cfg, manifest.noise.sigma_n)
    mode = resolve_sampling_mode(
        cfg.validation.mode, sigma_n, default_sampling_mode(sigma_n, cfg.consistency.weight > 0)
    )
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
    text = stored_text(cfg, info, model_source, storage)
    _log_block(start_banner(cfg, plan, info))
    return PreparedRun(plan=plan, train_ds=train_ds, stream=stream, data_counts=info.counts(), text=text)


def start_banner(cfg: FinetuneConfig, plan: RunPlan, info: DatasetInfo) -> list[str]:
    """What this run is: printed once, before the workers start."""
    return [
        f"---- fine-tune {cfg.run.name} ----",
        f"workers    {cfg.scaling.num_workers} x batch {cfg.train.batch_size} x accum {cfg.optim.grad_accum}, "
        f"{cfg.train.max_steps} steps, ZeRO-{cfg.deepspeed.zero_stage} {cfg.deepspeed.precision}",
        f"data       {plan.data_uri}: {info.rows} rows ({info.rows_skipped} skipped)",
        f"model      {plan.model_source}",
        "text       "
        + (
            "stored embeddings (the workers load no text encoders)"
            if info.manifest.text_embeddings is not None
            else "text encoders on every worker"
        ),
        f"sigma_n    {plan.sigma_n:.4g}, sampling {plan.sampling_mode}",
        f"outputs    {plan.outputs_uri}",
    ]


def final_summary(summary: RunSummary, summary_uri: str) -> list[str]:
    """The closing block of a run, from its summary."""

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    resumed = summary.resumed_from_step
    return [
        f"---- done: {summary.run} ----",
        f"steps      {summary.steps}" + (f" (resumed from step {resumed})" if resumed else ""),
        f"loss       {num(summary.first_loss, '.4g')} -> {num(summary.final_loss, '.4g')} "
        "(first -> last logged step)",
        f"speed      {num(summary.images_per_second, '.3g')} img/s, "
        f"{summary.images_seen} images in {summary.wall_seconds} s",
        f"model      {summary.exported_model}",
        f"samples    {summary.sample_grids}",
        f"loss curve {summary.loss_curve}",
        f"summary    {summary_uri}",
    ]


def _log_block(lines: list[str]) -> None:
    for line in lines:
        _log(line)


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
            "text": prepared.text,
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
    check_dataset_vae(cfg, model_source)  # so do shards encoded by another VAE
    check_training_data(cfg)  # and a data.uri without a dataset, and a missing held-out set
    check_validation_data(cfg)
    init_ray(cfg.run.ray_address, cfg.scaling.num_workers * cfg.scaling.cpus_per_worker)
    ensure_demo_shards(cfg, model_source)
    prepared = prepare_run(cfg, model_source)
    result = build_trainer(cfg, prepared, callbacks).fit()
    if result.error is not None:
        raise result.error
    summary = make_summary(cfg, prepared.plan, prepared.data_counts, result, started)
    summary_uri = save_summary(summary, prepared.plan, cfg.storage.resolved())
    if cfg.showcase.enabled:
        from .showcase_step import write_showcase

        numbers, lines = write_showcase(cfg, prepared.plan)
        summary = dataclasses.replace(summary, showcase=numbers)
        save_summary(summary, prepared.plan, cfg.storage.resolved())
        _log_block(lines)
    _log_block(final_summary(summary, summary_uri))
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


def save_summary(summary: RunSummary, plan: RunPlan, storage) -> str:
    """Write summary.json beside the outputs; returns its path/URI."""
    uri = join(plan.outputs_uri, SUMMARY_NAME)
    write_bytes_atomic(uri, json.dumps(summary.to_dict(), indent=2, default=str).encode(), storage)
    return uri


def make_summary(cfg: FinetuneConfig, plan: RunPlan, data_counts: dict, result, started: float) -> RunSummary:
    """The run's outcome, from the rank-0 worker summary and Train's result."""
    storage = cfg.storage.resolved()
    worker = WorkerSummary.from_dict(json.loads(read_text(join(plan.outputs_uri, WORKER_SUMMARY), storage)))
    checkpoints = [checkpoint_uri(cfg, c.path) for c, _ in (result.best_checkpoints or [])]
    return RunSummary(
        run=cfg.run.name,
        status="completed",
        steps=worker.steps,
        resumed_from_step=worker.resumed_from_step,
        restarts=len(worker.resumes),
        resumed_from_steps=worker.resumes,
        data_split=plan.data_split,
        data_position=worker.data_position,
        images_seen=worker.images_seen,
        **RunSummary.finals(worker.history),
        images_per_second=worker.images_per_second,
        data_wait_fraction=worker.data_wait_fraction,
        sigma_n=plan.sigma_n,
        sampling_mode=plan.sampling_mode,
        data={"uri": plan.data_uri, **data_counts},
        model_source=plan.model_source,
        outputs=plan.outputs_uri,
        exported_model=join(plan.outputs_uri, "model"),
        loss_curve=join(plan.outputs_uri, "loss_curve.png"),
        sample_grids=join(plan.outputs_uri, "samples"),
        latest_checkpoint=checkpoint_uri(cfg, result.checkpoint.path) if result.checkpoint else None,
        checkpoints=checkpoints,
        wall_seconds=round(time.time() - started, 1),
        history=worker.history,
        config=redacted(cfg),
    )
