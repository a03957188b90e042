"""Typed configuration of the memorization audit (``jobs/audit.py``), validated before any model loads.

``check_paths`` runs after validation and before any work: every weights path, model folder and
input the config names must exist and be readable, and an error names the field and the path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ambient.config import OptionalPathOrUri, PathOrUri, Section
from ambient.storage import StorageConfig, is_s3

from .results import DEFAULT_THRESHOLDS, NEAR_DUPLICATE, AuditLayout


class ModelEntry(Section):
    path: OptionalPathOrUri = Field(
        None, description="local diffusers SDXL folder; None = the tiny demo model"
    )
    label: str | None = Field(None, description="name in the report (default: the folder's name)")


class ItemsSection(Section):
    """The training items to audit: the originals the model saw (clean), with their captions."""

    kind: Literal["synthetic", "dataset", "folder"] = "synthetic"
    # synthetic: the built-in shapes dataset, re-rendered by (seed, index)
    seed: int = Field(0, description="synthetic: the dataset seed the model was trained on")
    start: int = Field(0, ge=0, description="synthetic: first index")
    # dataset: a shard dataset; synthetic-sourced shards are re-rendered from their manifest's seed and
    # row ids, clean (sigma_n = 0) latent shards are used as they are; other noisy shards are refused
    # folder: original images with a .txt caption beside each (or captions.jsonl), as prepare_shards reads
    path: OptionalPathOrUri = Field(None, description="dataset: local shard folder; folder: image folder")
    count: int = Field(8, ge=1, description="number of training items audited")
    resolution: int | None = Field(None, ge=8, description="pixels (None = the model's default size)")

    @model_validator(mode="after")
    def _path_for_kind(self) -> ItemsSection:
        if self.kind in ("dataset", "folder") and not self.path:
            raise ValueError(f"items.path is required when items.kind is {self.kind!r}")
        return self


class AttackSection(Section):
    """Reconstruction attack: noise the training latents heavily, reconstruct, compare to the original."""

    timesteps: list[float] = Field([900.0], description="SDXL DDPM timesteps of the corruption")
    mask: Literal["none", "center", "right_half", "bottom_half"] = Field(
        "none", description="latent region erased (set to pure noise) before noising"
    )
    mask_fraction: float = Field(0.5, gt=0, lt=1, description="center: side of the square, as a fraction")
    sample: bool = Field(True, description="also run the whole sampler down from the corrupted point")
    steps: int = Field(16, ge=1, description="sampler steps from sigma_t to 0")
    guidance: float = Field(1.0, ge=0, description="classifier-free guidance of the reconstruction")

    @field_validator("timesteps")
    @classmethod
    def _timesteps(cls, values: list[float]) -> list[float]:
        if not values:
            raise ValueError("attack.timesteps must list at least one timestep")
        bad = [t for t in values if not 0 < t <= 999]
        if bad:
            raise ValueError(f"attack.timesteps must lie in (0, 999], got {bad}")
        return values


class GenerationSection(Section):
    """Generation similarity: samples from the training captions against the training images."""

    n: int = Field(8, ge=0, description="samples (captions cycle over the items); 0 skips the section")
    steps: int = Field(16, ge=1)
    guidance: float = Field(1.0, ge=0)
    mode: Literal["auto", "full", "early_stop"] = Field(
        "auto",
        description="auto: each model's own default (its ambient_metadata.json: early stop at sigma_n for a "
        "model trained without consistency, else full); full or early_stop for every model",
    )
    sigma_n: float | None = Field(
        None, ge=0, description="early_stop: the level sampled down to; None = each model's own sigma_n"
    )
    thresholds: list[float] = Field(list(DEFAULT_THRESHOLDS), description="report the fraction above each")
    top_k: int = Field(8, ge=1, description="top matches shown beside their training images")


class FeaturesSection(Section):
    kind: Literal["builtin", "dinov2"] = "builtin"
    weights: OptionalPathOrUri = Field(
        None, description="dinov2: local folder of a transformers DINOv2 model"
    )

    @model_validator(mode="after")
    def _weights_for_dinov2(self) -> FeaturesSection:
        if self.kind == "dinov2" and not self.weights:
            raise ValueError("features.weights is required when features.kind is 'dinov2' (a local folder)")
        return self


class QualitySection(Section):
    """FID needs Inception weights (a TorchScript file) or reference statistics plus those weights;
    without them only the built-in Fréchet distance (not FID) is reported."""

    enabled: bool = True
    inception: OptionalPathOrUri = Field(
        None, description="TorchScript Inception (clean-fid/NVlabs .pt), local"
    )
    reference_stats: OptionalPathOrUri = Field(
        None, description=".npz with mu and sigma of Inception pool features"
    )

    @model_validator(mode="after")
    def _stats_need_inception(self) -> QualitySection:
        if self.reference_stats and not self.inception:
            raise ValueError("quality.reference_stats needs quality.inception to embed the generated images")
        return self


class AuditConfig(Section):
    models: list[ModelEntry] = Field(
        default_factory=lambda: [ModelEntry()], description="one model, or several side by side"
    )
    items: ItemsSection = ItemsSection()
    attack: AttackSection = AttackSection()
    generation: GenerationSection = GenerationSection()
    features: FeaturesSection = FeaturesSection()
    quality: QualitySection = QualitySection()
    score: Literal["tweedie", "sample", "generation"] = Field(
        "tweedie",
        description="memorization score: mean attack similarity (one Tweedie step or the sampler) at the "
        f"first timestep, or the fraction of generations above {NEAR_DUPLICATE:g}",
    )
    output_dir: PathOrUri = "runs/audit"
    seed: int = 0
    batch_size: int = Field(
        8,
        ge=1,
        description="items or prompts per text-encoder, UNet and VAE call (two UNet rows each with "
        "guidance) and images per feature-extractor call; peak memory follows it, not items.count",
    )
    threads: int | None = Field(None, ge=1, description="torch threads (None = 1 on a busy machine, else 2)")
    storage: StorageConfig = StorageConfig()  # reaches s3:// models and items (else the AWS_* variables)

    @field_validator("models")
    @classmethod
    def _models(cls, values: list[ModelEntry]) -> list[ModelEntry]:
        if not values:
            raise ValueError("models must list at least one model")
        return values


def _readable(path: Path) -> bool:
    return os.access(path, os.R_OK)


def check_file(field: str, value: str) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{field}: {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{field}: {path} is not a file")
    if not _readable(path):
        raise PermissionError(f"{field}: {path} is not readable")
    return path


def check_dir(field: str, value: str) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{field}: {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{field}: {path} is not a folder")
    if not (_readable(path) and os.access(path, os.X_OK)):
        raise PermissionError(f"{field}: {path} is not readable")
    return path


def check_paths(cfg: AuditConfig) -> None:
    """Every path the config names exists and is readable; errors name the field and the path."""
    from ambient.models.ref import ModelRef

    for i, model in enumerate(cfg.models):
        if model.path is None:
            continue
        if not is_s3(model.path):
            check_dir(f"models[{i}].path", model.path)
        ModelRef(model.path, f"models[{i}].path").check(cfg.storage.resolved())
    if cfg.items.kind in ("dataset", "folder"):
        check_dir("items.path", str(cfg.items.path))
    if cfg.features.kind == "dinov2":
        root = check_dir("features.weights", str(cfg.features.weights))
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"features.weights: {root} has no config.json (not a transformers model)")
    if cfg.quality.inception:
        check_file("quality.inception", cfg.quality.inception)
    if cfg.quality.reference_stats:
        check_file("quality.reference_stats", cfg.quality.reference_stats)


def dry_run(cfg: AuditConfig) -> str:
    """Validate the paths as a real run would, print the resolved config (here, not in
    ambient.eval.api: a dry run loads neither torch nor a model)."""
    from ambient.cli import print_dry_run

    check_paths(cfg)
    print_dry_run(cfg)
    return str(AuditLayout(Path(cfg.output_dir)).report_md)
