"""Typed configuration of ``jobs/prepare_shards.py``; validated before any cluster work."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, model_validator

from ambient.config import OptionalPathOrUri, PathOrUri, Section
from ambient.demo_paths import DATA_URI as DEMO_DATA_URI
from ambient.schedule import check_trainable_sigma, sdxl_sigma
from ambient.storage import StorageConfig


class SourceConfig(Section):
    """Where the images and captions come from."""

    kind: Literal["synthetic", "folder", "parquet", "webdataset"] = "synthetic"
    # synthetic: the built-in captioned shapes, deterministic by seed
    count: int = Field(default=256, ge=1, description="synthetic: number of images")
    seed: int = Field(default=0, description="synthetic: dataset seed")
    world: Literal["shapes", "base", "heldout", "cross", "star"] = Field(
        default="shapes",
        description="synthetic: which part of the shape world (ambient.synthetic: shapes = all base "
        "shapes and colour pairs; base = without the held-out colour pairs; heldout = only those; "
        "cross / star = a shape the base model never saw)",
    )
    image_size: int | None = Field(
        default=None, ge=8, description="synthetic: rendered size (None = resolution)"
    )
    replay_world: Literal["shapes", "base", "heldout", "cross", "star"] | None = Field(
        default=None,
        description="synthetic: a second world mixed into the data (rehearsal: a fine-tune on a new "
        "concept keeps seeing what the base drew, so it forgets less); needs replay_share",
    )
    replay_share: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="synthetic: share of the items from replay_world, evenly spaced",
    )
    partial_captions: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="synthetic: share of the items (drawn per item) whose caption names only some of "
        "the attributes: 'a red circle', 'a circle on a blue background' or 'a blue background' "
        "(it does not improve the base model's held-out colour pairs: docs/benchmarks.md)",
    )
    # folder: images with a `.txt` caption beside each, or a captions.jsonl ({"file": ..., "caption": ...})
    # parquet: a local or s3:// prefix of Parquet files with image bytes and captions
    # webdataset: a local or s3:// .tar file or prefix of .tar shards (image + .txt/.json caption per key)
    path: OptionalPathOrUri = Field(
        default=None, description="folder, parquet or webdataset: local path or s3:// prefix"
    )
    image_column: str = "image"  # binary, or a struct with a `bytes` field (Hugging Face style)
    caption_column: str = "caption"
    id_column: str | None = None  # None = content hash of the image bytes

    @model_validator(mode="after")
    def _path_for_kind(self) -> SourceConfig:
        if self.kind in ("folder", "parquet", "webdataset") and not self.path:
            raise ValueError(f"source.path is required when source.kind is {self.kind!r}")
        if self.kind == "folder" and self.path and self.path.startswith("s3://"):
            raise ValueError("source.path: a folder source must be local (use kind: parquet for S3)")
        if (self.replay_world is None) != (self.replay_share == 0):
            raise ValueError(
                "source.replay_world and source.replay_share go together: a world and a share > 0, or neither"
            )
        if self.partial_captions and self.kind != "synthetic":
            raise ValueError(
                f"source.partial_captions applies to the synthetic source only (source.kind is {self.kind!r})"
            )
        if self.replay_world is not None and self.replay_world == self.world:
            raise ValueError(f"source.replay_world: {self.replay_world!r} is source.world itself")
        return self


class DestinationConfig(Section):
    uri: PathOrUri = Field(default=DEMO_DATA_URI, description="local folder or s3://bucket/prefix")
    remove_stale_shards: bool = Field(
        default=True,
        description="after the new manifest is committed, delete the folder's shard files it does not "
        "list (older or crashed runs); off when a reader may still use the previous manifest",
    )
    overwrite: bool = Field(
        default=False,
        description="replace a dataset already at uri (one with a manifest.json); without it such a "
        "destination is refused (choose a new, versioned uri instead)",
    )
    lock_lease_s: float = Field(
        default=300,
        ge=1,  # S3 mtimes have 1 s resolution: the shard cleanup relies on a takeover being later
        validation_alias=AliasChoices("lock_lease_s", "lock_stale_after_s"),  # the name before the lease
        description="lease of the destination lock (.prepare.lock): a lock not renewed for this long "
        "belongs to a crashed run and is taken over; a live one means another preparation is running "
        "(refused)",
    )
    lock_renew_s: float = Field(
        default=30,
        gt=0,
        description="how often the running preparation renews its lock; at most half of lock_lease_s",
    )

    @model_validator(mode="after")
    def _renew_within_lease(self) -> DestinationConfig:
        if self.lock_renew_s * 2 > self.lock_lease_s:
            raise ValueError(
                f"destination.lock_renew_s ({self.lock_renew_s:g}) must be at most half of "
                f"destination.lock_lease_s ({self.lock_lease_s:g}), so that one late renewal does not "
                "lose the lock"
            )
        return self


class NoiseConfig(Section):
    """Data noise level: exactly one of a VE sigma or an SDXL DDPM timestep."""

    sigma_n: float | None = Field(default=None, ge=0, description="VE sigma; 0 writes clean rows")
    t_n: float | None = Field(default=None, ge=0, le=999, description="SDXL DDPM timestep")
    seed: int = Field(default=0, description="seed of the frozen per-sample noise")

    @model_validator(mode="after")
    def _exactly_one(self) -> NoiseConfig:
        if (self.sigma_n is None) == (self.t_n is None):
            raise ValueError("give exactly one of noise.sigma_n (VE sigma) or noise.t_n (DDPM timestep)")
        if self.t_n is not None:
            check_trainable_sigma(
                "noise.t_n", sdxl_sigma(self.t_n), f"{self.t_n:g} (sigma {sdxl_sigma(self.t_n):.4g})"
            )
        else:
            check_trainable_sigma("noise.sigma_n", float(self.sigma_n))
        return self


ENCODE_MICRO_BATCH = 4


class EncodeConfig(Section):
    space: Literal["latent", "image"] = "latent"  # image: pixel-space dataset, no VAE
    model: OptionalPathOrUri = Field(
        default=None, description="diffusers SDXL folder (local or s3://); None = tiny default"
    )
    batch_size: int = Field(default=32, ge=1, description="images per encoder task's batch (Ray map_batches)")
    micro_batch: int = Field(
        default=ENCODE_MICRO_BATCH,
        ge=1,
        description="images per VAE call within a batch; peak memory follows it, not batch_size",
    )
    workers: int = Field(
        default=1,
        ge=1,
        validation_alias=AliasChoices("workers", "actors"),  # "actors": the name before the task pool
        description="encoder tasks at a time (each Ray worker process loads the VAE once)",
    )
    num_gpus: float | None = Field(
        default=None, ge=0, description="GPUs per encoder task; None = 1 when the cluster has GPUs"
    )
    text_embeddings: bool = Field(
        default=False,
        description="also store each row's text embeddings (both encoders' prompt_embeds and the pooled "
        "one, float16) and the empty caption's, from encode.model's text encoders: training then loads "
        "no text encoders (about 318 KB more per row at SDXL's size)",
    )


class PrepareShardsConfig(Section):
    source: SourceConfig = SourceConfig()
    destination: DestinationConfig = DestinationConfig()
    storage: StorageConfig = StorageConfig()
    noise: NoiseConfig = NoiseConfig(sigma_n=0.5)
    resolution: int = Field(default=64, ge=8, description="square output resolution in pixels")
    crop: Literal["center", "random"] = "center"  # random: crop offset frozen per (id, noise.seed)
    encode: EncodeConfig = EncodeConfig()
    rows_per_shard: int = Field(default=128, ge=1)
    ray_address: str | None = Field(default=None, description="None = RAY_ADDRESS or a local cluster")
