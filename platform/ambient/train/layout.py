"""Where a run's files live: every output path of a fine-tuning run, named in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ambient.data.schema import SUMMARY_NAME
from ambient.storage import is_s3, join

OUTPUTS = "outputs"
MODEL = "model"
SAMPLES = "samples"
ROWS = "rows"
WORKERS = "workers"
LOSS_CURVE = "loss_curve.png"
COMPARISON = "comparison.png"
TENSORBOARD = "tensorboard"
WORKER_SUMMARY = "worker_summary.json"  # rank 0 -> the driver, beside summary.json
CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's list of registered checkpoints


@dataclass(frozen=True)
class RunLayout:
    """A run's folder ``storage_path/name`` (Ray Train's checkpoints and state) and its ``outputs/``.

    ``RunLayout.staging(folder)`` names the same outputs inside a local folder, which a worker fills
    and then uploads to ``outputs``."""

    storage_path: str  # an s3:// URI or an absolute local path: Ray Train's storage_path
    name: str  # run.name: the run's folder under storage_path
    outputs: str  # storage_path/name/outputs, or a worker's local staging folder

    @classmethod
    def of(cls, storage_path: str, name: str) -> RunLayout:
        """The layout of run ``name`` under ``storage_path`` (a local path made absolute here, on the
        driver: the workers run in other working directories)."""
        root = storage_path if is_s3(storage_path) else str(Path(storage_path).absolute())
        return cls(storage_path=root, name=name, outputs=join(root, name, OUTPUTS))

    @classmethod
    def staging(cls, folder: Path) -> RunLayout:
        """The outputs' names inside a local folder (uploaded to the run's ``outputs`` as a whole)."""
        return cls(storage_path=str(folder), name="", outputs=str(folder))

    @property
    def run_dir(self) -> str:
        """Ray Train's folder of the run: its checkpoints and state, and ``outputs/``."""
        return join(self.storage_path, self.name)

    @property
    def model(self) -> str:
        """The published export (versions/ and its CURRENT.json pointer)."""
        return join(self.outputs, MODEL)

    @property
    def samples(self) -> str:
        return join(self.outputs, SAMPLES)

    def sample_grid(self, name: str) -> str:
        """A grid of the validation prompts: ``step_NNNNNN`` at validation steps, ``final`` after EMA."""
        return join(self.samples, f"{name}.png")

    @property
    def rows(self) -> str:
        """data.record_rows: ``from-<resume step>/rank-<r>/step-<s>.json``."""
        return join(self.outputs, ROWS)

    def rows_file(self, resumed_from: int, rank: int, step: int) -> str:
        return join(self.rows, f"from-{resumed_from:06d}", f"rank-{rank}", f"step-{step:06d}.json")

    @property
    def workers(self) -> str:
        return join(self.outputs, WORKERS)

    def worker_record(self, rank: int) -> str:
        """rank-N.json: the rank's pid, host and start time."""
        return join(self.workers, f"rank-{rank}.json")

    @property
    def loss_curve(self) -> str:
        return join(self.outputs, LOSS_CURVE)

    @property
    def comparison(self) -> str:
        """showcase.enabled: the before/after picture."""
        return join(self.outputs, COMPARISON)

    @property
    def tensorboard(self) -> str:
        """tracking.tensorboard: the run's event files (one TensorBoard run; a sweep's trials, one each)."""
        return join(self.outputs, TENSORBOARD)

    @property
    def summary(self) -> str:
        return join(self.outputs, SUMMARY_NAME)

    @property
    def worker_summary(self) -> str:
        return join(self.outputs, WORKER_SUMMARY)

    @property
    def checkpoint_snapshot(self) -> str:
        """Ray Train's snapshot of the registered checkpoints (the checkpoints are its own folders)."""
        return join(self.run_dir, CHECKPOINT_SNAPSHOT)
