"""The sweep's configuration: a base fine-tuning config plus the search space and the search method."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ambient.config import OptionalPathOrUri, PathOrUri, Section
from ambient.schedule import check_trainable_sigma
from ambient.train.config import FinetuneConfig


class SearchSpace(Section):
    """Each entry is a list of values: a grid axis for ``grid``, a choice for ``random`` and ``optuna``.
    None leaves the base config's value."""

    sigma_train: list[float] | None = Field(
        None, description="training noise levels (VE sigma); each must be >= the data's sigma_n"
    )
    consistency_weight: list[float] | None = Field(None, description="lambda values; each >= 0")
    lr: list[float] | None = None
    consistency_steps: list[int] | None = None
    lora_rank: list[int] | None = None

    @field_validator("sigma_train", "consistency_weight")
    @classmethod
    def _non_negative(cls, values: list[float] | None, info) -> list[float] | None:
        if values is not None:
            if not values:
                raise ValueError(f"{info.field_name} must list at least one value")
            bad = [v for v in values if v < 0]
            if bad:
                raise ValueError(f"{info.field_name} values must be >= 0, got {bad}")
            if info.field_name == "sigma_train":
                check_trainable_sigma("space.sigma_train", max(values))
        return values

    @field_validator("lr", "consistency_steps")
    @classmethod
    def _positive(cls, values: list | None, info) -> list | None:
        if values is not None and (not values or any(v <= 0 for v in values)):
            raise ValueError(f"{info.field_name} must list values > 0, got {values}")
        return values

    @field_validator("lora_rank")
    @classmethod
    def _rank(cls, values: list[int] | None) -> list[int] | None:
        if values is not None and (not values or any(v < 0 for v in values)):
            raise ValueError(f"lora_rank must list values >= 0 (0 = full fine-tuning), got {values}")
        return values

    def axes(self) -> dict[str, list]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class SearchSection(Section):
    method: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = Field(
        1, ge=1, description="grid: repeats of the grid; random/optuna: number of trials"
    )
    seed: int = 0


class AshaSection(Section):
    enabled: bool = True
    grace_period: int = Field(4, ge=1, description="optimizer steps before a trial may be stopped")
    reduction_factor: float = Field(2, gt=1)


class MemorizationSection(Section):
    """The audit's memorization score of each finished trial (ambient.eval.memorization_score)."""

    enabled: bool = True
    items_uri: OptionalPathOrUri = Field(
        None,
        description="the training originals the auditor holds (clean-latent shards); None = the training "
        "shards, which works for the synthetic demo (its originals are re-rendered)",
    )
    count: int = Field(8, ge=1, description="training items attacked per trial")
    weight: float = Field(
        0.0, ge=0, description="objective = val_ambient_loss + weight x memorization picks the best config"
    )


class SweepConfig(Section):
    name: str = Field("sweep-demo", pattern=r"^[A-Za-z0-9._-]+$")
    storage_path: PathOrUri = "runs/tune"
    base: FinetuneConfig = FinetuneConfig()
    space: SearchSpace = SearchSpace(sigma_train=[0.5, 1.0], consistency_weight=[0.0, 1.0])
    search: SearchSection = SearchSection()
    asha: AshaSection = AshaSection()
    memorization: MemorizationSection = MemorizationSection()
    metric: Literal["val_ambient_loss"] = "val_ambient_loss"
    max_concurrent_trials: int = Field(2, ge=1)
    trial_cpus: float = Field(
        0.5, gt=0, description="CPUs of each trial's driver (its workers: base.scaling)"
    )
    holdout_rows: int = Field(32, ge=8, description="demo: held-out synthetic rows prepared when absent")
    quality_samples: int = Field(32, ge=4, description="samples generated per trial for the quality score")
    quality_steps: int = Field(12, ge=1)
    ray_address: str | None = None
