"""The fine-tuning job's configuration: one typed model, validated before any cluster work."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_type_hints

from pydantic import Field, ValidationInfo, create_model, field_validator, model_validator

from ambient.config import OptionalPathOrUri, PathOrUri, Section
from ambient.core import ConsistencySettings, setting_problem
from ambient.demo_paths import DATA_URI as DEMO_DATA_URI
from ambient.demo_paths import RUN_NAME as DEMO_RUN_NAME
from ambient.demo_paths import RUN_STORAGE_PATH as DEMO_RUN_STORAGE_PATH
from ambient.schedule import check_trainable_sigma
from ambient.storage import StorageConfig


class ModelSection(Section):
    path: OptionalPathOrUri = Field(
        None, description="diffusers SDXL folder (local path or s3:// prefix); None = the tiny demo model"
    )
    lora_rank: int = Field(
        0, ge=0, description="0 trains the whole UNet; > 0 trains LoRA adapters of this rank"
    )
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha (scale alpha / rank); None = rank")
    lora_export: Literal["adapter", "merged"] = Field(
        "adapter",
        description="LoRA runs: adapter exports the LoRA weights (with rank and alpha) and a reference to "
        "the base model, not a copy of it (SDXL's base is about 7 GB); merged also writes the full "
        "diffusers folder with the adapter folded into the UNet",
    )
    gradient_checkpointing: bool = False


class DataSection(Section):
    uri: PathOrUri = Field(DEMO_DATA_URI, description="shard dataset (local folder or s3:// prefix)")
    prepare_if_missing: bool = Field(
        True,
        description=f"create the synthetic demo shards when uri is the demo's own {DEMO_DATA_URI} and holds "
        "no dataset (any other uri without a dataset is an error)",
    )
    skip_bad_shards: bool = False
    shuffle_seed: int = 0
    shuffle_window_rows: int = Field(
        1024,
        ge=0,
        description="rows are shuffled every epoch inside windows of consecutive shards holding at least "
        "this many rows (bounds a read task's memory); 0 keeps each shard's row order",
    )
    split: Literal["exact", "ray_split"] = Field(
        "exact",
        description="exact: each rank streams its own micro-batches of the run's deterministic row order and "
        "a checkpoint records the stream position (resume repeats and skips no row); ray_split: Ray Train's "
        "streaming_split of one dataset (dynamic balancing; a resume skips step x accum batches per rank, "
        "which repeats and skips rows)",
    )
    record_rows: bool = Field(
        False,
        description="debug: each rank writes the row ids of every step under outputs/rows/ (for resume audits)",
    )
    caption_dropout: float = Field(0.1, ge=0, le=1)
    allow_vae_mismatch: bool = Field(
        False,
        description="train although the shards' manifest records another VAE than the model's (a "
        "deliberately shared VAE); sigma_n is defined in the encoding VAE's scaled latent space",
    )


class LossSection(Section):
    weighting: Literal["none", "x0"] = "none"
    sigma_sampling: Literal["timesteps", "lognormal", "log_uniform"] = Field(
        "timesteps",
        description="timesteps: uniform over SDXL's discrete steps above sigma_n (authors' recipe)",
    )
    p_mean: float = -1.2
    p_std: float = Field(1.2, gt=0)
    max_weight: float = Field(1e4, gt=0)
    sigma_train: float | None = Field(
        None, ge=0, description="train at this VE level (>= each row's sigma_n) with frozen extra noise"
    )
    noise_seed: int = Field(0, description="seed of the frozen extra noise used with sigma_train")
    data_noise: Literal["known", "ignored"] = Field(
        "known",
        description="ignored: a baseline, not a method: train on the rows as if they were clean (their "
        "sigma_n taken as 0, sampled to the end); what the ambient losses are compared against",
    )

    @model_validator(mode="after")
    def _sigma_train_in_schedule(self) -> LossSection:
        if self.sigma_train is not None:
            check_trainable_sigma("loss.sigma_train", self.sigma_train)
        return self


class _ConsistencyRules(Section):
    """The consistency section's behaviour; its fields are ConsistencySettings' (see below)."""

    @field_validator("*")
    @classmethod
    def _rule(cls, value: Any, info: ValidationInfo) -> Any:
        problem = setting_problem(info.field_name, value)
        if problem is not None:
            raise ValueError(problem)
        return value

    def settings(self) -> ConsistencySettings:
        return ConsistencySettings(**self.model_dump())


def _settings_fields(cls: type) -> dict[str, Any]:
    """pydantic field definitions of a dataclass: its types, defaults and ``doc`` metadata."""
    hints = get_type_hints(cls)
    return {
        f.name: (hints[f.name], Field(f.default, description=f.metadata.get("doc")))
        for f in dataclasses.fields(cls)
    }


# One set of defaults and one set of rules: the section is generated from ambient.core's dataclass.
ConsistencySection = create_model(
    "ConsistencySection",
    __base__=_ConsistencyRules,
    __module__=__name__,
    **_settings_fields(ConsistencySettings),
)


class OptimSection(Section):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(10, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    grad_accum: int = Field(1, ge=1)


class DeepSpeedSection(Section):
    zero_stage: int = Field(2, ge=0, le=3)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    offload_optimizer: Literal["none", "cpu"] = "none"
    offload_param: Literal["none", "cpu"] = "none"
    extra: dict = Field(default_factory=dict, description="merged into the generated DeepSpeed config last")


class TrainSection(Section):
    batch_size: int = Field(4, ge=1, description="per worker, per micro-step")
    max_steps: int = Field(60, ge=1)
    log_every: int = Field(5, ge=1)
    checkpoint_every: int = Field(30, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    ema_decay: float | None = Field(None, gt=0, lt=1)
    seed: int = 0
    threads_per_worker: int = Field(1, ge=1)


class ValidationSection(Section):
    every_steps: int = Field(30, ge=1)
    prompts: list[str] = Field(
        default_factory=lambda: [
            "a red circle on a blue background",
            "a yellow square on a black background",
            "a green triangle on a white background",
            "a purple ring on an orange background",
        ]
    )
    num_steps: int = Field(20, ge=1)
    guidance_scale: float = Field(3.0, ge=0)
    mode: Literal["auto", "full", "early_stop"] = Field(
        "auto", description="auto: full sampling with consistency, early stop at sigma_n without"
    )
    seed: int = 0
    data_uri: OptionalPathOrUri = Field(
        None, description="held-out noisy shards; the validation ambient loss is computed on them"
    )
    rows: int = Field(32, ge=1, description="held-out rows used (the first by id)")
    micro_batch: int = Field(
        8,
        ge=1,
        description="held-out evaluations (rows x 4 noise draws) per text-encoder and UNet call of the "
        "validation loss; peak memory follows it, not rows",
    )
    sample_micro_batch: int = Field(
        4,
        ge=1,
        description="prompts per sampling call (two UNet rows each with guidance) and images per VAE "
        "decode of the sample grids",
    )


class ShowcaseSection(Section):
    """The before/after picture written at the end of a run (outputs/comparison.png)."""

    enabled: bool = Field(False, description="write comparison.png and its numbers into summary.json")
    examples: int = Field(6, ge=1, le=32, description="training rows shown (noisy | base | fine-tuned)")
    adherence_prompts: int = Field(
        32, ge=0, description="prompts scored for adherence per set (synthetic-world captions only; 0 = none)"
    )
    retain_world: Literal["shapes", "base", "heldout", "cross", "star"] | None = Field(
        "base", description="synthetic world the base already drew: adherence there shows forgetting"
    )
    num_steps: int = Field(20, ge=1)
    guidance_scale: float = Field(3.0, ge=0)
    seed: int = 0
    micro_batch: int = Field(
        4,
        ge=1,
        description="prompts per sampling call (two UNet rows each with guidance) and images per VAE "
        "decode of the picture and its adherence samples",
    )


class TrackingSection(Section):
    """Experiment tracking: the trackers a run logs to (rank 0 logs; the run's own files stay the record)."""

    tensorboard: bool = Field(
        True, description="TensorBoard event files under the run's outputs (outputs/tensorboard)"
    )


class ScalingSection(Section):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict,
        description="extra (custom) Ray resources each train worker needs, e.g. {trainer: 1} to keep "
        "workers on the nodes that offer that resource",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement of the workers: SPREAD puts them on different nodes where it can"
    )


class RunSection(Section):
    name: str = Field(DEMO_RUN_NAME, pattern=r"^[A-Za-z0-9._-]+$")
    storage_path: PathOrUri = Field(
        DEMO_RUN_STORAGE_PATH, description="Ray Train storage (local folder or s3:// prefix)"
    )
    max_failures: int = Field(1, ge=0)
    ray_address: str | None = Field(None, description="None: RAY_ADDRESS if set, else a local cluster")


class FinetuneConfig(Section):
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    loss: LossSection = LossSection()
    consistency: ConsistencySection = ConsistencySection()
    optim: OptimSection = OptimSection()
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    train: TrainSection = TrainSection()
    validation: ValidationSection = ValidationSection()
    showcase: ShowcaseSection = ShowcaseSection()
    tracking: TrackingSection = TrackingSection()
    scaling: ScalingSection = ScalingSection()
    run: RunSection = RunSection()
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneConfig:
        if self.deepspeed.offload_param != "none" and self.deepspeed.zero_stage != 3:
            raise ValueError("deepspeed.offload_param needs deepspeed.zero_stage = 3")
        if self.deepspeed.offload_optimizer != "none" and self.deepspeed.zero_stage == 0:
            raise ValueError("deepspeed.offload_optimizer needs deepspeed.zero_stage >= 1")
        if self.deepspeed.precision == "fp16" and not self.scaling.use_gpu:
            raise ValueError("deepspeed.precision fp16 needs scaling.use_gpu (CPU has no fp16 kernels)")
        if self.train.ema_decay is not None and self.deepspeed.zero_stage == 3:
            raise ValueError(
                "train.ema_decay is not supported with deepspeed.zero_stage = 3 (partitioned weights)"
            )
        if self.loss.data_noise == "ignored" and self.loss.sigma_train is not None:
            raise ValueError("loss.data_noise 'ignored' (the naive baseline) cannot take loss.sigma_train")
        return self
