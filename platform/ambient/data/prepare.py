"""prepare_shards: images + captions -> noisy-latent Parquet shards, as one Ray Data pipeline.

checks (before Ray: source, model, destination, lock, no dataset there unless destination.overwrite)
-> source -> decode/resize/crop (tasks) -> VAE encode + frozen noise [+ text embeddings] (tasks)
-> write shards (tasks) [-> the empty caption's embedding file] -> manifest.json (the commit)
-> stale shard cleanup -> summary.json

The lock is a lease renewed from the driver while the pipeline runs; the commit is made only after a
final conditional write proves the lease still held (``prepare_locked``, which runs any ``ShardStage``:
the Ray one here, plain writers in tests).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import ray
import ray.data

from ambient.config import redacted
from ambient.core import sdxl_alphas_cumprod, timestep_to_sigma, ve_sigmas
from ambient.ray_init import init_ray
from ambient.storage import StorageConfig, ensure_dir, exists, join, write_bytes_atomic

from .config import NoiseConfig, PrepareShardsConfig
from .encode import EncoderSpec, TextEncoderSpec, embed_on_cluster, encode_batch, vae_identity
from .errors import DataError, NoValidRowsError
from .lock import DestinationLease, DestinationLockedError, destination_lease
from .preprocess import Preprocess
from .schema import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SUMMARY_NAME,
    Manifest,
    NoiseInfo,
    SigmaStats,
    TextEmbeddingsInfo,
    VaeIdentity,
    utc_now,
)
from .sources import folder_items, parquet_files, source_dataset
from .text import text_shape, write_empty_caption
from .webdataset import webdataset_files
from .writer import (
    ShardWriter,
    StaleShards,
    WriteReport,
    fold_reports,
    new_run_id,
    remove_stale_shards,
    write_manifest,
)


@dataclass
class PrepareResult:
    manifest_uri: str
    manifest: Manifest
    summary: dict


def noise_sigma(noise: NoiseConfig) -> float:
    """The VE sigma of the configured noise (a DDPM timestep is converted on SDXL's schedule)."""
    if noise.sigma_n is not None:
        return float(noise.sigma_n)
    return float(timestep_to_sigma(noise.t_n, ve_sigmas(sdxl_alphas_cumprod())))


def encode_model(cfg: PrepareShardsConfig) -> str:
    """encode.model, or the default base model when unset. Only its VAE is read (vae_identity checks
    it, naming encode.model): a VAE-only folder is a valid encoder, so no whole-SDXL check here."""
    if cfg.encode.model:
        return cfg.encode.model
    from ambient.models.ref import ModelRef  # diffusers only when latents are encoded

    return ModelRef().check().uri


def plan_tensor(
    cfg: PrepareShardsConfig, storage: StorageConfig
) -> tuple[tuple[int, int, int], VaeIdentity | None]:
    """Tensor shape and VAE identity, from the VAE's config alone (fails before any cluster work)."""
    r = cfg.resolution
    if cfg.encode.space == "image":
        return (3, r, r), None
    model = encode_model(cfg)
    vae = vae_identity(model, storage)
    if r % vae.downsample_factor:
        raise ValueError(
            f"resolution {r} is not a multiple of the VAE's downsampling factor {vae.downsample_factor}"
        )
    side = r // vae.downsample_factor
    return (vae.latent_channels, side, side), vae


def plan_text(cfg: PrepareShardsConfig, storage: StorageConfig) -> TextEncoderSpec | None:
    """encode.text_embeddings: the text encoders' model and output shape, from their configs alone
    (a model without them fails here, naming encode.model)."""
    if not cfg.encode.text_embeddings:
        return None
    model = encode_model(cfg)
    return TextEncoderSpec(model=model, shape=text_shape(model, storage))


def _encoder_gpus(requested: float | None) -> float:
    if requested is not None:
        return requested
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


class DestinationExistsError(DataError):
    """The destination already holds a dataset and destination.overwrite is off."""


def check_source(cfg: PrepareShardsConfig, storage: StorageConfig) -> None:
    """A missing folder, an empty prefix or a wrong column fails here, before Ray starts."""
    if cfg.source.kind == "folder":
        folder_items(Path(str(cfg.source.path)))
    elif cfg.source.kind == "parquet":
        parquet_files(cfg.source, storage)
    elif cfg.source.kind == "webdataset":
        webdataset_files(str(cfg.source.path), storage)  # a prefix without .tar files


def check_destination(cfg: PrepareShardsConfig, storage: StorageConfig) -> None:
    """Refuse to replace an existing dataset unless destination.overwrite is set (call under the lock)."""
    uri = cfg.destination.uri
    if not cfg.destination.overwrite and exists(join(uri, MANIFEST_NAME), storage):
        raise DestinationExistsError(
            f"destination.uri {uri} already holds a dataset ({MANIFEST_NAME}): choose a new uri (say, a "
            "versioned prefix), or set destination.overwrite: true to replace it"
        )


def prepare_shards(cfg: PrepareShardsConfig) -> PrepareResult:
    """Prepare the dataset at destination.uri; every input is checked before Ray starts, and one
    preparation at a time holds the destination (its lock object, a renewed lease)."""
    storage = cfg.storage.resolved()
    shape, vae = plan_tensor(cfg, storage)  # a missing model fails here, naming encode.model
    text = plan_text(cfg, storage)
    ensure_dir(cfg.destination.uri, storage)  # unreachable endpoint / bad credentials fail here
    check_source(cfg, storage)
    return prepare_locked(cfg, storage, shape, vae, RayStage(cfg, storage, shape, vae, text))


def write_text_info(
    cfg: PrepareShardsConfig, storage: StorageConfig, run_id: str, text: TextEncoderSpec
) -> TextEmbeddingsInfo:
    """Embed the empty caption once (a Ray task, like the rows) and write it beside the shards."""
    gpus = _encoder_gpus(cfg.encode.num_gpus)
    prompt, pooled = embed_on_cluster(text.model, storage, [""], num_gpus=gpus)
    name = write_empty_caption(cfg.destination.uri, run_id, prompt[0], pooled[0], storage)
    return TextEmbeddingsInfo(
        model=text.model,
        sequence_length=text.shape.length,
        prompt_dim=text.shape.dim,
        pooled_dim=text.shape.pooled,
        empty_caption_file=name,
    )


class ShardStage(Protocol):
    """What prepare_locked runs under the lock: the encoding and shard writing, and the empty
    caption's embedding file. RayStage is the real one; tests drive the lock with plain writers."""

    def start(self) -> None:
        """Start what the stage runs on (untimed: not part of the summary's seconds)."""

    def write(self, run_id: str, lease: DestinationLease) -> WriteReport:
        """Write the shards, named by ``run_id``; what was written and rejected."""
        ...

    def text_info(self, run_id: str) -> TextEmbeddingsInfo | None:
        """Write the empty caption's embedding file when the dataset has text embeddings."""
        ...


@dataclass
class RayStage:
    """The Ray Data pipeline: decode/resize/crop, encode + frozen noise, one shard per batch."""

    cfg: PrepareShardsConfig
    storage: StorageConfig
    shape: tuple[int, int, int]
    vae: VaeIdentity | None
    text: TextEncoderSpec | None = None

    def start(self) -> None:
        init_ray(self.cfg.ray_address, self.cfg.encode.workers, log_to_driver=False)

    def write(self, run_id: str, lease: DestinationLease) -> WriteReport:
        cfg, sigma_n = self.cfg, noise_sigma(self.cfg.noise)
        pre = Preprocess(cfg.resolution, cfg.crop, cfg.noise.seed)
        writer = ShardWriter(
            cfg.destination.uri, self.storage, run_id, cfg.encode.space, sigma_n, cfg.noise.seed
        )
        spec = EncoderSpec(
            cfg.encode.space,
            self.vae.model if self.vae else None,
            self.storage,
            sigma_n,
            cfg.noise.seed,
            self.shape,
            micro_batch=cfg.encode.micro_batch,
            text=self.text,
        )
        ds = (
            source_dataset(cfg.source, cfg.resolution, self.storage)
            .map_batches(_call, fn_args=(pre,), batch_size=cfg.encode.batch_size)
            .map_batches(
                encode_batch,
                fn_args=(spec,),
                batch_size=cfg.encode.batch_size,
                compute=ray.data.TaskPoolStrategy(size=cfg.encode.workers),
                num_gpus=_encoder_gpus(cfg.encode.num_gpus),
            )
            .map_batches(_call, fn_args=(writer,), batch_size=cfg.rows_per_shard)
        )
        return fold_reports([row["report"] for row in ds.take_all()])

    def text_info(self, run_id: str) -> TextEmbeddingsInfo | None:
        if self.text is None:
            return None
        return write_text_info(self.cfg, self.storage, run_id, self.text)


def prepare_locked(
    cfg: PrepareShardsConfig,
    storage: StorageConfig,
    shape: tuple[int, int, int],
    vae: VaeIdentity | None,
    stage: ShardStage,
) -> PrepareResult:
    """Under the destination's lease (renewed while the stage runs): check the destination, write the
    shards, commit the manifest (only while still holding the lease), clean up, write the summary."""
    dest = cfg.destination
    with destination_lease(dest.uri, storage, dest.lock_lease_s, dest.lock_renew_s) as lease:
        check_destination(cfg, storage)
        stage.start()
        run_id = new_run_id()
        start = time.perf_counter()
        report = stage.write(run_id, lease)
        summary = _summary(cfg, run_id, report, time.perf_counter() - start)
        lease.check()  # taken over while writing: stop before anything else is written
        if report.rows == 0:
            reasons = (
                ", ".join(f"{k}: {v}" for k, v in report.reject_reasons().items()) or "the source is empty"
            )
            raise NoValidRowsError(
                f"no valid rows to write to {dest.uri}: all {len(report.rejected)} rejected ({reasons})"
            )
        manifest = _manifest(cfg, run_id, shape, vae, report, stage.text_info(run_id))
        return _commit(cfg, storage, lease, manifest, summary)


def _summary(cfg: PrepareShardsConfig, run_id: str, report: WriteReport, elapsed: float) -> dict:
    return {
        "dataset_id": run_id,
        "rows_written": report.rows,
        "rows_rejected": len(report.rejected),
        "rejected_by_reason": report.reject_reasons(),
        "rejected": [{"id": i, "reason": r} for i, r in report.rejected[:1000]],
        "shards": len(report.shards),
        "bytes": report.bytes,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(report.rows / elapsed, 2) if elapsed > 0 else None,
        "sigma_n": noise_sigma(cfg.noise),
        "stale_shards": None,  # the cleanup after the manifest is committed (None when it is off)
        "config": redacted(cfg),
    }


def _manifest(
    cfg: PrepareShardsConfig,
    run_id: str,
    shape: tuple[int, int, int],
    vae: VaeIdentity | None,
    report: WriteReport,
    text_info: TextEmbeddingsInfo | None,
) -> Manifest:
    sigma_n = noise_sigma(cfg.noise)
    return Manifest(
        dataset_id=run_id,
        schema_version=SCHEMA_VERSION,
        complete=True,
        created_at=utc_now(),
        space=cfg.encode.space,
        tensor_shape=list(shape),
        resolution=cfg.resolution,
        num_rows=report.rows,
        num_shards=len(report.shards),
        shards=report.shards,
        sigma_n=report.sigma or SigmaStats(min=0, max=0, mean=0, clean_rows=0),
        noise=NoiseInfo(seed=cfg.noise.seed, sigma_n=sigma_n, t_n=cfg.noise.t_n),
        vae=vae,
        text_embeddings=text_info,
        source=redacted(cfg.source),
    )


def _commit(
    cfg: PrepareShardsConfig,
    storage: StorageConfig,
    lease: DestinationLease,
    manifest: Manifest,
    summary: dict,
) -> PrepareResult:
    """Write the manifest (the commit) if this run still holds the lease, then remove the stale shards
    (only files this run wrote or that predate its lock) and write the summary."""
    uri = cfg.destination.uri
    lease.confirm()  # a final conditional write: a run whose lock was taken over stops here
    manifest_uri = write_manifest(uri, manifest, storage)  # the commit: the new dataset is complete
    if cfg.destination.remove_stale_shards:
        summary["stale_shards"] = asdict(_cleanup(uri, storage, lease, manifest))
    write_summary(uri, summary, storage)  # after the commit: a summary always describes a manifest
    return PrepareResult(manifest_uri=manifest_uri, manifest=manifest, summary=summary)


def _cleanup(uri: str, storage: StorageConfig, lease: DestinationLease, manifest: Manifest) -> StaleShards:
    keep = {s.file for s in manifest.shards}
    if manifest.text_embeddings is not None:
        keep.add(manifest.text_embeddings.empty_caption_file)
    try:
        lease.check()  # the lock lost after the commit: the dataset stands, another run owns the folder
    except DestinationLockedError as exc:
        return StaleShards(error=f"skipped: {exc}")
    return remove_stale_shards(uri, keep, storage, manifest.dataset_id, lease.acquired_mtime)


def write_summary(uri: str, summary: dict, storage: StorageConfig) -> None:
    write_bytes_atomic(join(uri, SUMMARY_NAME), json.dumps(summary, indent=2, default=str).encode(), storage)


def _call(batch, fn):
    return fn(batch)
