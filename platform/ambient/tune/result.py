"""A finished trial's numbers: its last report to Ray Tune and its row in the sweep's results table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ambient.train.records import RunSummary


def _not_a_column():
    return field(metadata={"column": False})


@dataclass(frozen=True)
class TrialResult:
    """The fields in table order. ``step`` and ``val_ambient_loss`` are StepRecord fields: the training
    reports before this one carry them too (ASHA's time attribute and the sweep's metric)."""

    step: int
    val_ambient_loss: float  # the last held-out loss of the run
    quality_sw: float
    adherence: float | None  # None: the held-out captions are not the synthetic world's
    memorization: float | None  # None: memorization.enabled false, or the audit could not run
    images_per_second: float | None
    objective: float = _not_a_column()  # val_ambient_loss + weight x memorization: sorts the table
    summary: str = _not_a_column()  # the trial's summary.json (a column of results.csv only)

    @classmethod
    def of(
        cls,
        summary: RunSummary,
        summary_uri: str,
        *,
        quality_sw: float,
        adherence: float | None,
        memorization: float | None,
        memorization_weight: float,
    ) -> TrialResult:
        val = summary.final_val_ambient_loss
        return cls(
            step=summary.steps,
            val_ambient_loss=val,
            quality_sw=quality_sw,
            adherence=adherence,
            memorization=memorization,
            images_per_second=summary.images_per_second,
            objective=val + memorization_weight * (memorization or 0.0),
            summary=summary_uri,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def fields() -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(TrialResult))

    @staticmethod
    def columns() -> tuple[str, ...]:
        """The results table's metric columns."""
        return tuple(f.name for f in dataclasses.fields(TrialResult) if f.metadata.get("column", True))
