"""The callbacks every run has: those its config asks for, in the order they must run."""

from __future__ import annotations

from typing import Any

from .callbacks import Callback, RowRecording, SampleGrids, Showcase, StepDelay, WorkerRegistration
from .config import FinetuneConfig
from .tracking import TensorBoardTracking


def standard_callbacks(
    cfg: FinetuneConfig, *, showcase: bool = False, hparams: dict[str, Any] | None = None
) -> list[Callback]:
    """The callbacks of every run, a sweep trial's too: those its config asks for. ``showcase``: the
    run's Showcase (a sweep trial has none); ``hparams``: a sweep trial's axes, for its tracker.

    The tracker comes after SampleGrids and Showcase (it reads their pictures); building it checks,
    on the driver before training, that its folder takes files."""
    rows = [RowRecording()] if cfg.data.record_rows else []
    shown = [Showcase()] if showcase else []
    tracking = [TensorBoardTracking.for_run(cfg, hparams)] if cfg.tracking.tensorboard else []
    return [WorkerRegistration(), *rows, SampleGrids(), *shown, *tracking, *StepDelay.from_env()]
