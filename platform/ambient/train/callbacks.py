"""The parts of a run that are not the training step: each decides itself when it is due.

Events, in the order a run meets them (``worker`` is the rank's ``ambient.train.loop.TrainingWorker``,
``run`` the driver's ``ambient.train.trainer.FinetuneRun``):

- ``on_worker_start(worker)``: every rank, once it knows its rank, before the model loads;
- ``on_step_end(worker, ids)``: every rank, after each optimizer step (loop state and EMA updated);
  ``ids`` are the rows this rank trained on in the step;
- ``on_report(worker, due)``: every rank, at a report step, after the log line and before the
  checkpoint and the report to Ray Train;
- ``on_train_end(worker)``: every rank, after the export, before rank 0 uploads its outputs;
- ``on_run_end(run, summary)``: the driver, after summary.json is written; returns the summary
  (written again when it changed).

A callback is pickled to the workers with the run's config: it holds settings, not live state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Protocol

from ambient.storage import StorageConfig, write_bytes_atomic

from .checkpointing import LoopState
from .config import FinetuneConfig
from .due import Due
from .layout import RunLayout
from .plan import RunPlan
from .records import RunSummary


class TrainingWorker(Protocol):
    """What a callback sees of a worker (ambient.train.loop imports this module, not the reverse)."""

    cfg: FinetuneConfig
    plan: RunPlan
    state: LoopState
    storage: StorageConfig
    staged: RunLayout  # rank 0's local staging of the outputs
    rank: int
    world: int
    ema: Any  # EMA weights, or None

    def sample_validation_prompts(self) -> list: ...


class FinetuneRun(Protocol):
    """What a callback sees of the driver's run (ambient.train.trainer)."""

    cfg: FinetuneConfig
    plan: RunPlan


STEP_DELAY_ENV = "AMBIENT_TEST_STEP_DELAY_S"


class Callback:
    """Every event is a no-op unless a subclass handles it."""

    def on_worker_start(self, worker: TrainingWorker) -> None:
        pass

    def on_step_end(self, worker: TrainingWorker, ids: list[str]) -> None:
        pass

    def on_report(self, worker: TrainingWorker, due: Due) -> None:
        pass

    def on_train_end(self, worker: TrainingWorker) -> None:
        pass

    def on_run_end(self, run: FinetuneRun, summary: RunSummary) -> RunSummary:
        return summary


class WorkerRegistration(Callback):
    """Every rank leaves ``outputs/workers/rank-N.json`` (pid, host, start time) so an operator can find
    its process; a restarted worker group rewrites them."""

    def on_worker_start(self, worker: TrainingWorker) -> None:
        import ray

        record = {
            "rank": worker.rank,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "started": time.time(),
        }
        uri = worker.plan.layout.worker_record(worker.rank)
        write_bytes_atomic(uri, json.dumps(record).encode(), worker.storage)


class RowRecording(Callback):
    """data.record_rows: each rank writes the ids it trained on at each step, under the attempt's
    resume step (``outputs/rows/from-S/rank-R/step-N.json``)."""

    def on_step_end(self, worker: TrainingWorker, ids: list[str]) -> None:
        state = worker.state
        uri = worker.plan.layout.rows_file(state.resumed_from_step or 0, worker.rank, state.step)
        write_bytes_atomic(uri, json.dumps({"ids": ids, "world": worker.world}).encode(), worker.storage)


class SampleGrids(Callback):
    """A grid of the validation prompts at each sampling step, and a ``final`` one after an EMA run's
    export (the last step's grid showed the raw weights). Under ZeRO-3 every rank takes part in the
    sampling (the parameters are partitioned); otherwise rank 0 samples alone."""

    def on_report(self, worker: TrainingWorker, due: Due) -> None:
        if due.sample:
            self._grid(worker, f"step_{worker.state.step:06d}")

    def on_train_end(self, worker: TrainingWorker) -> None:
        if worker.ema is not None:
            self._grid(worker, "final")

    def _grid(self, worker: TrainingWorker, name: str) -> None:
        if worker.rank != 0 and worker.cfg.deepspeed.zero_stage != 3:
            return
        from ambient.models.sampling import image_grid
        from ambient.storage import upload_directory

        images = worker.sample_validation_prompts()
        if worker.rank == 0:
            path = Path(worker.staged.sample_grid(name))
            path.parent.mkdir(parents=True, exist_ok=True)
            image_grid(images, rows=max(1, int(math.sqrt(len(images))))).save(path)
            upload_directory(worker.staged.outputs, worker.plan.layout.outputs, worker.storage)


class Showcase(Callback):
    """showcase.enabled: the driver writes ``outputs/comparison.png`` and its numbers into the summary."""

    def on_run_end(self, run: FinetuneRun, summary: RunSummary) -> RunSummary:
        if not run.cfg.showcase.enabled:
            return summary
        from .showcase_step import write_showcase

        numbers, lines = write_showcase(run.cfg, run.plan)
        for line in lines:
            print(f"[ambient finetune] {line}", flush=True)
        return dataclasses.replace(summary, showcase=numbers)


@dataclasses.dataclass(frozen=True)
class StepDelay(Callback):
    """Tests only: sleep after each step, so a failure can be injected mid-run. Set through the
    AMBIENT_TEST_STEP_DELAY_S environment variable of the driver (``StepDelay.from_env``)."""

    seconds: float

    @classmethod
    def from_env(cls) -> list[Callback]:
        seconds = float(os.environ.get(STEP_DELAY_ENV) or 0)
        return [cls(seconds)] if seconds > 0 else []

    def on_step_end(self, worker: TrainingWorker, ids: list[str]) -> None:
        time.sleep(self.seconds)
