"""The driver: one fine-tuning run. ``FinetuneRun.preflight`` checks every input before Ray starts;
``FinetuneRun.train`` plans the run, trains it with Ray Train + DeepSpeed and writes its summary."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import ray
import ray.data
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from ambient.config import redacted
from ambient.core import default_sampling_mode, resolve_sampling_mode
from ambient.data.config import DestinationConfig, EncodeConfig, PrepareShardsConfig, SourceConfig
from ambient.data.encode import describe_vae, downsample_factor, vae_config, vae_differences, vae_identity
from ambient.data.errors import ManifestError, VaeMismatchError
from ambient.data.row_stream import StreamPlan
from ambient.data.schema import MANIFEST_NAME, Manifest
from ambient.data.streaming import DatasetInfo, inspect_dataset, stream_epochs
from ambient.data.text import read_empty_caption
from ambient.data.validate import load_manifest
from ambient.demo_paths import is_demo_data_uri
from ambient.models.conditioning import TextEmbeddings
from ambient.models.ref import ModelRef
from ambient.models.source import files_root
from ambient.ray_init import init_ray
from ambient.storage import exists, is_s3, join, read_text, resolve_filesystem, write_bytes_atomic

from . import resume
from .callbacks import Callback
from .config import DEMO_DATA_URI, FinetuneConfig
from .layout import RunLayout
from .loop import train_loop_per_worker
from .plan import RunPlan, StoredText
from .records import RunSummary, WorkerSummary
from .run_callbacks import standard_callbacks


def _log(message: str) -> None:
    print(f"[ambient finetune] {message}", flush=True)


def model_ref(cfg: FinetuneConfig) -> ModelRef:
    """The run's model as its config names it (an empty model.path is the default)."""
    return ModelRef(cfg.model.path or None, field="model.path")


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


def prepare_demo_shards(cfg: FinetuneConfig, model_source: str) -> None:
    """Create the synthetic demo shards at the demo's own data.uri (check_training_data found none)."""
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


def _storage_filesystem(cfg: FinetuneConfig, layout: RunLayout):
    if not is_s3(layout.storage_path):
        return None, layout.storage_path
    fs, path = resolve_filesystem(layout.storage_path, cfg.storage.resolved())
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
        unet = json.loads(read_text(join(files_root(model_source, storage), "unet", "config.json"), storage))
    except FileNotFoundError:
        unet = {}  # checked when the model is loaded
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


def prepare_run(cfg: FinetuneConfig, model_source: str, layout: RunLayout) -> PreparedRun:
    """Validate the shards and plan the run (Ray must be initialised; ``model_source`` checked by the
    preflight, ``ModelRef.check``; the held-out set checked by the preflight too)."""
    storage = cfg.storage.resolved()
    info = checked_dataset(cfg, storage, model_source)
    exact = cfg.data.split == "exact"
    train_ds = None if exact else streaming_epochs(cfg, storage, info)
    stream = (
        StreamPlan.from_info(info, cfg.data.shuffle_seed, cfg.data.shuffle_window_rows) if exact else None
    )
    # What the checkpoints record of the data; the checkpoint a resume would start from must match it.
    identity = resume.current_identity(cfg.data.uri, storage, stream, cfg.data.split)
    resume.check_latest_checkpoint(layout.checkpoint_snapshot, layout.run_dir, identity, storage)
    manifest = info.manifest
    sigma_n = training_sigma_n(cfg, manifest.noise.sigma_n)
    mode = resolve_sampling_mode(
        cfg.validation.mode, sigma_n, default_sampling_mode(sigma_n, cfg.consistency.weight > 0)
    )
    plan = RunPlan(
        model_source=model_source,
        prediction_type=_read_scheduler_config(model_source, storage).get("prediction_type", "epsilon"),
        data_uri=cfg.data.uri,
        sigma_n=float(sigma_n),
        sampling_mode=mode,
        resolution=manifest.resolution,
        layout=layout,
        data_split=cfg.data.split,
        data_identity=identity.to_dict(),
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
        f"outputs    {plan.layout.outputs}",
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


def build_trainer(
    cfg: FinetuneConfig,
    prepared: PreparedRun,
    callbacks: list | None = None,
    run_callbacks: list[Callback] | None = None,
) -> TorchTrainer:
    """The run's TorchTrainer: ``callbacks`` are Ray Train's (e.g. Tune's report callback),
    ``run_callbacks`` the run's own (ambient.train.callbacks), sent to every worker."""
    layout = prepared.plan.layout
    fs, storage_path = _storage_filesystem(cfg, layout)
    gpu = {"GPU": 1} if cfg.scaling.use_gpu else {}
    return TorchTrainer(
        train_loop_per_worker,
        # Storage resolved here, on the driver: workers on other nodes may lack its AWS_* environment.
        train_loop_config={
            "finetune": cfg.model_copy(update={"storage": cfg.storage.resolved()}).model_dump(),
            "plan": prepared.plan.__dict__,
            "stream": prepared.stream,
            "text": prepared.text,
            "callbacks": list(run_callbacks or []),
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
            name=layout.name,
            storage_path=storage_path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=callbacks or None,
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        datasets={"train": prepared.train_ds} if prepared.train_ds is not None else None,
    )


class FinetuneRun:
    """One fine-tuning run: its inputs checked once (``preflight``), then trained (``train``). A sweep
    checks its base config once and trains each trial's config as a run of its own."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        model_source: str,
        prepare_demo_data: bool = False,
        started: float | None = None,
    ) -> None:
        self.cfg, self.model_source = cfg, model_source
        self.started = time.time() if started is None else started  # summary.json's wall_seconds
        self.prepare_demo_data = prepare_demo_data  # the demo's data.uri holds no dataset yet
        self.layout = RunLayout.of(cfg.run.storage_path, cfg.run.name)
        self.plan: RunPlan | None = None  # set by train

    @classmethod
    def preflight(cls, cfg: FinetuneConfig, holdout_field: str = "validation.data_uri") -> FinetuneRun:
        """Before any cluster work: the model reference, the VAE that encoded the shards, the dataset
        (or the demo's, to be prepared), the held-out set (errors name ``holdout_field``)."""
        started = time.time()
        # Checked, not downloaded: each worker makes an s3:// model local itself.
        model_source = model_ref(cfg).check(cfg.storage.resolved()).uri
        check_dataset_vae(cfg, model_source)
        prepare = check_training_data(cfg)
        check_validation_data(cfg, holdout_field)
        return cls(cfg, model_source, prepare_demo_data=prepare, started=started)

    def prepare_data(self) -> None:
        """Ray started: the demo's shards, when the preflight found none."""
        if self.prepare_demo_data:
            prepare_demo_shards(self.cfg, self.model_source)
            self.prepare_demo_data = False

    def train(self, callbacks: list[Callback], ray_callbacks: list | None = None) -> RunSummary:
        """Plan, train (Ray started, the data prepared) and write summary.json; returns the summary."""
        storage = self.cfg.storage.resolved()
        prepared = prepare_run(self.cfg, self.model_source, self.layout)
        self.plan = prepared.plan
        trainer = build_trainer(self.cfg, prepared, ray_callbacks, run_callbacks=callbacks)
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        summary = make_summary(self.cfg, prepared.plan, prepared.data_counts, result, self.started)
        save_summary(summary, prepared.plan, storage)
        for callback in callbacks:
            ended = callback.on_run_end(self, summary)
            if ended is not summary:
                summary = ended
                save_summary(summary, prepared.plan, storage)
        return summary


def run_finetune(cfg: FinetuneConfig, callbacks: list | None = None) -> str:
    """Run (or resume) the fine-tuning job described by ``cfg``; returns the summary.json path/URI.

    ``callbacks``: the run's own (ambient.train.callbacks.Callback) join the standard ones; any other
    is a Ray Train callback. A rerun with the same run.name and run.storage_path resumes from the
    latest checkpoint.
    """
    run = FinetuneRun.preflight(cfg)  # a bad model, dataset or held-out set fails before Ray starts
    init_ray(cfg.run.ray_address, cfg.scaling.num_workers * cfg.scaling.cpus_per_worker)
    run.prepare_data()
    own = [c for c in callbacks or [] if isinstance(c, Callback)]
    ray_callbacks = [c for c in callbacks or [] if not isinstance(c, Callback)]
    summary = run.train([*standard_callbacks(cfg, showcase=True), *own], ray_callbacks)
    _log_block(final_summary(summary, run.layout.summary))
    return run.layout.summary


def _read_scheduler_config(model_source: str, storage) -> dict:
    path = join(files_root(model_source, storage), "scheduler", "scheduler_config.json")
    try:
        text = read_text(path, storage)
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
    uri = plan.layout.summary
    write_bytes_atomic(uri, json.dumps(summary.to_dict(), indent=2, default=str).encode(), storage)
    return uri


def make_summary(cfg: FinetuneConfig, plan: RunPlan, data_counts: dict, result, started: float) -> RunSummary:
    """The run's outcome, from the rank-0 worker summary and Train's result."""
    storage = cfg.storage.resolved()
    layout = plan.layout
    worker = WorkerSummary.from_dict(json.loads(read_text(layout.worker_summary, storage)))
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
        outputs=layout.outputs,
        exported_model=layout.model,
        loss_curve=layout.loss_curve,
        sample_grids=layout.samples,
        latest_checkpoint=checkpoint_uri(cfg, result.checkpoint.path) if result.checkpoint else None,
        checkpoints=checkpoints,
        wall_seconds=round(time.time() - started, 1),
        history=worker.history,
        config=redacted(cfg),
    )
