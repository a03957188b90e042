"""What a run records, typed: one record per optimizer step or logging window, and one for the run.

Each quantity has one name, a field of these records, and every place it appears derives from it:
the Prometheus metric ``ambient_train_<field>`` (ambient.metric_names; a unit test keeps the two in
step), the dict reported to Ray Train (and through it to Ray Tune), the loss history in checkpoints
and summary.json, and summary.json's ``final_<field>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

METRIC_PREFIX = "ambient_train_"


def _metric(kind: str):
    """A field exported to Prometheus as ``ambient_train_<field>`` (a gauge is set, a counter added to)."""
    return field(metadata={"metric": kind})


@dataclass(frozen=True)
class StepRecord:
    """The numbers of one optimizer step, in two uses under one set of names.

    Each worker records every step's own values on its Prometheus metrics (losses of its batch, its
    images/s). At each report step the loop records the window since the last one: losses averaged over
    the window's steps and over all ranks, images/s of all ranks. That record is reported to Ray Train
    and appended to the loss history. A field that is None leaves its gauge as it was.
    """

    step: int = _metric("gauge")
    loss: float = _metric("gauge")  # ambient + lambda x consistency
    ambient_loss: float = _metric("gauge")
    consistency_loss: float | None = _metric("gauge")  # unweighted; None: it ran on no step of the window
    lr: float = _metric("gauge")
    # None only in a history restored from a checkpoint written before these records (no speeds then).
    images_per_second: float | None = _metric("gauge")
    step_seconds: float | None = _metric("gauge")  # mean over the window
    data_wait_seconds: float | None = _metric("gauge")  # mean over the window
    images: int | None = _metric("counter")  # images trained on: this worker's step, or all ranks' window
    checkpoint_seconds: float | None = field(default=None, metadata={"metric": "gauge"})
    # The held-out loss measured at val_step, carried into every later record: Ray Tune checks its
    # metric in every report. Not a metric: a run without a held-out set never has one.
    val_ambient_loss: float | None = None
    val_step: int | None = None

    def with_validation(self, last: tuple[float, int] | None) -> StepRecord:
        """This record carrying the last held-out loss, ``(loss, step measured)``, if there is one."""
        if last is None:
            return self
        return dataclasses.replace(self, val_ambient_loss=last[0], val_step=last[1])

    def to_dict(self) -> dict[str, Any]:
        """Every field (None included): a history entry with a fixed set of keys."""
        return dataclasses.asdict(self)

    def report(self) -> dict[str, Any]:
        """What Ray Train gets: the fields that hold a value (a missing key, not None, when there is none)."""
        return {k: v for k, v in self.to_dict().items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepRecord:
        """A record from its dict, also from a history written before these records (its keys ambient,
        consistency and val_ambient, and no speeds). An unknown key raises, naming it."""
        data = dict(data)
        for old, new in LEGACY_NAMES.items():
            if old in data:
                data[new] = data.pop(old)
        if data.get("val_ambient_loss") is not None:
            data.setdefault("val_step", data.get("step"))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown StepRecord field(s) {unknown}; the fields are {sorted(known)}")
        speeds = ("images_per_second", "step_seconds", "data_wait_seconds", "images")
        return cls(**{**dict.fromkeys(speeds), **data})


# Other names of these fields that a checkpoint's loss history may use; read as these fields.
LEGACY_NAMES = {
    "ambient": "ambient_loss",
    "consistency": "consistency_loss",
    "val_ambient": "val_ambient_loss",
}


def metric_fields() -> dict[str, str]:
    """{Prometheus metric name: kind} for every exported field of StepRecord."""
    return {
        METRIC_PREFIX + f.name: f.metadata["metric"]
        for f in dataclasses.fields(StepRecord)
        if "metric" in f.metadata
    }


def metric_values(record: StepRecord) -> dict[str, float]:
    """{Prometheus metric name: value} for the record's exported fields that hold a value."""
    if not isinstance(record, StepRecord):
        raise TypeError(f"expected a StepRecord, got {type(record).__name__}")
    return {
        METRIC_PREFIX + f.name: float(value)
        for f in dataclasses.fields(record)
        if "metric" in f.metadata and (value := getattr(record, f.name)) is not None
    }


def check_metric_specs(specs: Sequence) -> None:
    """The exported StepRecord fields and ``specs`` (MetricSpecs) name the same metrics of the same
    kinds; ValueError naming each difference (a field without a spec would be a series never created)."""
    fields = metric_fields()
    declared = {s.name: s.kind for s in specs}
    problems = [f"{n}: a StepRecord field without a MetricSpec" for n in sorted(set(fields) - set(declared))]
    problems += [f"{n}: a MetricSpec without a StepRecord field" for n in sorted(set(declared) - set(fields))]
    problems += [
        f"{n}: StepRecord says {fields[n]}, its MetricSpec {declared[n]}"
        for n in sorted(set(fields) & set(declared))
        if fields[n] != declared[n]
    ]
    if problems:
        raise ValueError("training metrics out of step with ambient.metric_names: " + "; ".join(problems))


def last_value(history: Sequence[StepRecord], name: str) -> Any:
    """The last value the history holds for field ``name`` (None if none)."""
    return next((v for r in reversed(history) if (v := getattr(r, name)) is not None), None)


@dataclass(frozen=True)
class WorkerSummary:
    """What rank 0 leaves for the driver at the end (outputs/worker_summary.json)."""

    steps: int
    images_seen: int
    resumed_from_step: int | None
    resumes: list[int]
    data_position: int
    history: list[StepRecord]
    images_per_second: float | None  # all ranks, over this attempt's steps
    data_wait_fraction: float | None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "history": [r.to_dict() for r in self.history]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerSummary:
        return cls(**{**data, "history": [StepRecord.from_dict(h) for h in data.get("history", [])]})


# The losses summary.json gives as final_<field> (and the first total loss as first_loss).
FINAL_FIELDS = ("loss", "ambient_loss", "consistency_loss", "val_ambient_loss")


@dataclass(frozen=True)
class RunSummary:
    """summary.json: a run's outcome, written by the driver."""

    run: str
    status: str
    steps: int
    resumed_from_step: int | None
    restarts: int  # worker-group starts that restored a checkpoint
    resumed_from_steps: list[int]
    data_split: str
    data_position: int | None
    images_seen: int
    final_loss: float | None
    final_ambient_loss: float | None
    final_consistency_loss: float | None
    final_val_ambient_loss: float | None
    first_loss: float | None
    images_per_second: float | None
    data_wait_fraction: float | None
    sigma_n: float
    sampling_mode: str
    data: dict[str, Any]
    model_source: str
    outputs: str
    exported_model: str
    loss_curve: str
    sample_grids: str
    latest_checkpoint: str | None
    checkpoints: list[str]
    wall_seconds: float
    history: list[StepRecord]
    config: dict[str, Any]
    showcase: dict[str, Any] | None = None  # the before/after picture's numbers (showcase.enabled)

    @staticmethod
    def finals(history: Sequence[StepRecord]) -> dict[str, float | None]:
        """final_<field> for each of FINAL_FIELDS, and first_loss."""
        finals = {f"final_{name}": last_value(history, name) for name in FINAL_FIELDS}
        return {**finals, "first_loss": history[0].loss if history else None}

    def to_dict(self) -> dict[str, Any]:
        data = {**dataclasses.asdict(self), "history": [r.to_dict() for r in self.history]}
        if self.showcase is None:
            del data["showcase"]
        return data
