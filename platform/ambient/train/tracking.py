"""Experiment tracking: a run's numbers and pictures in TensorBoard (``tracking.tensorboard``, on by default).

Rank 0 writes event files into its local staging (``RunLayout.tensorboard``), uploaded with the other
outputs to ``outputs/tensorboard`` (local or S3); the other ranks never touch the tracker. The driver
adds the run's final numbers, the showcase picture and the export's location in an event file of its
own in the same folder, at the run's last step. A resumed attempt opens its writer with
``purge_step`` = the checkpoint's step + 1, so TensorBoard hides what the failed attempt logged after
the checkpoint and the recomputed steps appear once.

A tracker that cannot write at the start is an error before training (``TensorBoardTracking.for_run``);
one that fails mid-run is reported once and switched off, and the run goes on (its own files stay the
record).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ambient.config import redacted
from ambient.storage import (
    StorageError,
    exists,
    read_bytes,
    resolve_filesystem,
    upload_directory,
    write_bytes_atomic,
)

from .callbacks import Callback, FinetuneRun, TrainingWorker
from .config import FinetuneConfig
from .due import Due
from .layout import RunLayout
from .records import RunSummary, StepRecord

# StepRecord fields logged at each report step as ``train/<field>``: one name per quantity.
TRAIN_FIELDS = (
    "loss",
    "ambient_loss",
    "consistency_loss",
    "lr",
    "images_per_second",
    "step_seconds",
    "data_wait_seconds",
)
VALIDATION_TAG = "validation/ambient_loss"
GRID_TAG = "samples/grid"
FINAL_GRID_TAG = "samples/final"
CONFIG_TAG = "config/resolved"
AXES_TAG = "config/trial_axes"
SHOWCASE_TAG = "showcase/comparison"
EXPORT_TAG = "run/export"
# RunSummary fields the driver logs as ``summary/<field>`` at the last step.
SUMMARY_FIELDS = (
    "final_loss",
    "final_ambient_loss",
    "final_consistency_loss",
    "final_val_ambient_loss",
    "first_loss",
    "images_per_second",
    "data_wait_fraction",
    "images_seen",
    "wall_seconds",
)
PROBE = ".ambient-write-check"


def _log(message: str) -> None:
    print(f"[ambient tracking] {message}", flush=True)


def _writer(log_dir: str | Path, purge_step: int | None = None):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir), purge_step=purge_step)


def check_tensorboard(cfg: FinetuneConfig, layout: RunLayout) -> None:
    """Before training: the package is there and the run's ``outputs/tensorboard`` takes a file;
    otherwise an error naming tracking.tensorboard and the folder."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        raise ValueError(
            f"tracking.tensorboard: the tensorboard package cannot be imported ({err}); install it "
            "(pip install tensorboard) or set tracking.tensorboard: false"
        ) from None
    storage = cfg.storage.resolved()
    probe = f"{layout.tensorboard}/{PROBE}"
    try:
        write_bytes_atomic(probe, b"", storage)
        fs, path = resolve_filesystem(probe, storage)
        fs.delete_file(path)
    except (OSError, StorageError) as err:
        raise StorageError(
            f"tracking.tensorboard: cannot write event files to {layout.tensorboard} ({err}); "
            "fix the location or set tracking.tensorboard: false"
        ) from None


def _markdown_block(text: str) -> str:
    """TensorBoard renders text as Markdown: indented lines keep JSON as written."""
    return "\n".join("    " + line for line in text.splitlines())


def _hparam_value(value: Any) -> bool | int | float | str:
    """TensorBoard's hparams take numbers, strings and booleans; anything else as its text."""
    return value if isinstance(value, bool | int | float | str) else json.dumps(value, default=str)


def _image(path: Path):
    """A PNG as an HWC uint8 array (what SummaryWriter.add_image takes with dataformats='HWC')."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def _numbers(data: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The finite numbers of a (nested) dict as {prefix/key: value}."""
    found: dict[str, float] = {}
    for key, value in data.items():
        tag = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            found.update(_numbers(value, tag))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            found[tag] = float(value)
    return found


class TensorBoardTracking(Callback):
    """tracking.tensorboard: rank 0's scalars, grids and config, and the driver's final numbers.

    ``hparams``: a sweep trial's axes {name: value}, written as TensorBoard hparams of the trial's run.
    After SampleGrids in a run's callbacks (it reads the grid SampleGrids wrote at the step) and after
    Showcase (the driver's part reads comparison.png)."""

    def __init__(self, hparams: Mapping[str, Any] | None = None) -> None:
        self.hparams = dict(hparams or {})
        self._writer: Any = None  # rank 0's SummaryWriter, opened at its first report
        self._off = False  # a failure switched the tracker off for the rest of this process

    @classmethod
    def for_run(cls, cfg: FinetuneConfig, hparams: Mapping[str, Any] | None = None) -> TensorBoardTracking:
        """The callback, once its folder is known to take files (the driver, before training)."""
        check_tensorboard(cfg, RunLayout.of(cfg.run.storage_path, cfg.run.name))
        return cls(hparams)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled to the workers with settings only: each rank 0 opens its own writer.
        return {**self.__dict__, "_writer": None, "_off": False}

    # ---- rank 0 ------------------------------------------------------------------------------------

    def on_report(self, worker: TrainingWorker, due: Due) -> None:
        if worker.rank != 0:
            return
        step = worker.state.step
        self._safely("report", step, lambda: self._report(worker, due))

    def on_train_end(self, worker: TrainingWorker) -> None:
        if worker.rank != 0:
            return
        self._safely("end", worker.state.step, lambda: self._end(worker))
        self._close()  # the loop uploads the staged outputs, these files with them, next

    def _report(self, worker: TrainingWorker, due: Due) -> None:
        writer = self._open(worker)
        record: StepRecord = worker.state.history[-1]  # the loop appends the step's record first
        for name in TRAIN_FIELDS:
            value = getattr(record, name)
            if value is not None:
                writer.add_scalar(f"train/{name}", value, record.step)
        if record.step_seconds and record.data_wait_seconds is not None:
            fraction = record.data_wait_seconds / record.step_seconds
            writer.add_scalar("train/data_wait_fraction", fraction, record.step)
        if record.val_ambient_loss is not None and record.val_step == record.step:
            writer.add_scalar(VALIDATION_TAG, record.val_ambient_loss, record.step)
        grid = Path(worker.staged.sample_grid(f"step_{record.step:06d}"))
        if due.sample and grid.is_file():
            writer.add_image(GRID_TAG, _image(grid), record.step, dataformats="HWC")
        if due.sample or due.checkpoint:
            # A resume starts from the checkpoint: what it logged up to there is in the outputs.
            writer.flush()
            upload_directory(worker.staged.tensorboard, worker.plan.layout.tensorboard, worker.storage)

    def _end(self, worker: TrainingWorker) -> None:
        writer = self._open(worker)
        final = Path(worker.staged.sample_grid("final"))
        if final.is_file():  # SampleGrids' grid of an EMA run's exported weights
            writer.add_image(FINAL_GRID_TAG, _image(final), worker.state.step, dataformats="HWC")
        writer.flush()

    def _open(self, worker: TrainingWorker) -> Any:
        """Rank 0's writer: the config (and a trial's axes) at the attempt's first step."""
        if self._writer is not None:
            return self._writer
        resumed = worker.state.resumed_from_step
        log_dir = Path(worker.staged.tensorboard)
        log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = _writer(log_dir, purge_step=None if resumed is None else resumed + 1)
        start = resumed or 0
        config = json.dumps(redacted(worker.cfg), indent=2, default=str)
        self._writer.add_text(CONFIG_TAG, _markdown_block(config), start)
        if self.hparams:
            self._write_hparams(start)
        return self._writer

    def _write_hparams(self, step: int) -> None:
        """The trial's axes as hparams of this run (TensorBoard's HPARAMS tab compares the trials)."""
        from torch.utils.tensorboard.summary import hparams

        values = {k: _hparam_value(v) for k, v in self.hparams.items()}
        metrics = {VALIDATION_TAG: 0.0, "train/loss": 0.0}  # tags of the run's own scalars
        for summary in hparams(values, metrics):
            self._writer.file_writer.add_summary(summary, step)
        self._writer.add_text(AXES_TAG, _markdown_block(json.dumps(values, indent=2)), step)

    def _close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception as err:  # noqa: BLE001 - the run's own files stay the record
                self._fail("close", None, err)

    def _safely(self, what: str, step: int | None, action: Callable[[], None]) -> None:
        """Run ``action`` unless the tracker is off; a failure is reported once and switches it off."""
        if self._off:
            return
        try:
            action()
        except Exception as err:  # noqa: BLE001 - a tracker never stops the training
            self._fail(what, step, err)
            self._close()

    def _fail(self, what: str, step: int | None, err: BaseException) -> None:
        if self._off:
            return
        self._off = True
        at = "" if step is None else f" at step {step}"
        _log(
            f"tracking.tensorboard failed{at} ({what}: {type(err).__name__}: {err}); TensorBoard logging "
            "is off for the rest of the run, which goes on (its own files stay the record)"
        )

    # ---- the driver --------------------------------------------------------------------------------

    def on_run_end(self, run: FinetuneRun, summary: RunSummary) -> RunSummary:
        self._safely("summary", summary.steps, lambda: self._driver_end(run, summary))
        return summary

    def _driver_end(self, run: FinetuneRun, summary: RunSummary) -> None:
        """The final numbers, the showcase picture and the export's location, at the last step: an event
        file of the driver's own, staged locally and uploaded beside rank 0's."""
        layout, storage = run.plan.layout, run.cfg.storage.resolved()
        step = summary.steps
        with tempfile.TemporaryDirectory(prefix="ambient-tensorboard-") as staging:
            writer = _writer(staging)
            try:
                for tag, value in _numbers(
                    {k: getattr(summary, k) for k in SUMMARY_FIELDS}, "summary"
                ).items():
                    writer.add_scalar(tag, value, step)
                if summary.showcase:
                    for tag, value in _numbers(summary.showcase, "showcase").items():
                        writer.add_scalar(tag, value, step)
                    self._add_showcase(writer, layout, storage, step)
                export = {"model": summary.exported_model, "outputs": summary.outputs}
                writer.add_text(EXPORT_TAG, _markdown_block(json.dumps(export, indent=2)), step)
            finally:
                writer.close()
            upload_directory(staging, layout.tensorboard, storage)

    @staticmethod
    def _add_showcase(writer: Any, layout: RunLayout, storage: Any, step: int) -> None:
        if not exists(layout.comparison, storage):
            return
        with tempfile.NamedTemporaryFile(suffix=".png") as picture:
            picture.write(read_bytes(layout.comparison, storage))
            picture.flush()
            writer.add_image(SHOWCASE_TAG, _image(Path(picture.name)), step, dataformats="HWC")
