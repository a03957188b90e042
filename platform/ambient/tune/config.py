"""The sweep's configuration: a base fine-tuning config plus the search space and the search method."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, create_model, field_validator

from ambient.config import OptionalPathOrUri, PathOrUri, Section
from ambient.train.config import FinetuneConfig

from .axes import AXES, NAMED, RESERVED_SECTIONS, flatten_paths
from .trial import checked_values


class _SpaceRules(Section):
    """Each entry is a list of values: a grid axis for ``grid``, a choice for ``random`` and ``optuna``.
    None leaves the base config's value. The named axes are generated from ``axes.AXES``; each value is
    checked against the base config by SweepConfig (as ``--set path=value`` would be)."""

    paths: dict[str, Any] = Field(
        default_factory=dict,
        description="more axes by dotted FinetuneConfig path, e.g. {optim.weight_decay: [0.0, 0.01]}",
    )

    @field_validator("*")
    @classmethod
    def _non_empty(cls, values: Any, info: ValidationInfo) -> Any:
        if info.field_name == "paths":
            return _checked_paths(values)
        if values is not None and not values:
            raise ValueError(f"{info.field_name} must list at least one value")
        return values

    def axes(self) -> dict[str, list]:
        """{axis name: values} of every axis given: the named ones, then the paths (named by path)."""
        named = {a.name: getattr(self, a.name) for a in AXES if getattr(self, a.name) is not None}
        return {**named, **self.paths}


def _checked_paths(paths: dict[str, Any]) -> dict[str, list]:
    flat = flatten_paths(paths)
    for path, values in flat.items():
        named = [a.name for a in AXES if a.path == path]
        if named:
            raise ValueError(f"{path}: sweep it as space.{named[0]}")
        if path.split(".", 1)[0] in RESERVED_SECTIONS or "." not in path:
            raise ValueError(
                f"{path}: not a sweepable FinetuneConfig field (section.field, not run.* or storage.*)"
            )
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: give a list of at least one value")
    return flat


# One table of axes: the section's named fields are generated from axes.AXES.
SearchSpace = create_model(
    "SearchSpace",
    __base__=_SpaceRules,
    __module__=__name__,
    **{a.name: (list[Any] | None, Field(None, description=f"{a.path}: {a.doc}")) for a in AXES},
)


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
    space: SearchSpace = Field(
        default_factory=lambda: {"sigma_train": [0.5, 1.0], "consistency_weight": [0.0, 1.0]},
        validate_default=True,  # checked against the base like a given space
    )
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

    @field_validator("space")
    @classmethod
    def _space_fits_base(cls, space: _SpaceRules, info: ValidationInfo) -> _SpaceRules:
        """Each value applied to the base as ``--set path=value`` (an invalid base is reported on its own)."""
        base = info.data.get("base")
        if base is None:
            return space
        base_dump = base.model_dump()
        checked = {name: checked_values(base_dump, name, values) for name, values in space.axes().items()}
        named = {name: values for name, values in checked.items() if name in NAMED}
        paths = {name: values for name, values in checked.items() if name not in NAMED}
        return space.model_copy(update={**named, "paths": paths})
