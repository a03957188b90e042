"""tracking.tensorboard: the callback driven by a fake worker and driver (no Ray), its event files read
back with TensorBoard's own reader."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from pydantic import ValidationError
from tensorboard.backend.event_processing import event_accumulator as ea

from ambient.storage import StorageError, upload_directory
from ambient.train import tracking
from ambient.train.callbacks import SampleGrids, Showcase
from ambient.train.checkpointing import LoopState
from ambient.train.config import FinetuneConfig
from ambient.train.due import Due
from ambient.train.layout import RunLayout
from ambient.train.records import RunSummary, StepRecord
from ambient.train.run_callbacks import standard_callbacks
from ambient.train.tracking import TensorBoardTracking

SECRET = "do-not-log-me"


def _cfg(root: Path, **tracking_section) -> FinetuneConfig:
    return FinetuneConfig(
        run={"name": "tb", "storage_path": str(root / "runs")},
        storage={"secret_access_key": SECRET},
        tracking=tracking_section or {},
    )


def _worker(cfg: FinetuneConfig, staging: Path, rank: int = 0, state: LoopState | None = None):
    """What the callback reads of a TrainingWorker."""
    layout = RunLayout.of(cfg.run.storage_path, cfg.run.name)
    return SimpleNamespace(
        cfg=cfg,
        plan=SimpleNamespace(layout=layout),
        state=state or LoopState(),
        storage=cfg.storage.resolved(),
        staged=RunLayout.staging(staging),
        rank=rank,
        world=2,
        ema=None,
    )


def _record(step: int, loss: float, val: float | None = None, val_step: int | None = None) -> StepRecord:
    return StepRecord(
        step=step,
        loss=loss,
        ambient_loss=loss * 0.9,
        consistency_loss=None,
        lr=1e-4,
        images_per_second=12.5,
        step_seconds=0.4,
        data_wait_seconds=0.1,
        images=8,
        val_ambient_loss=val,
        val_step=val_step,
    )


def _due(sample: bool = False, checkpoint: bool = False, validate: bool = False) -> Due:
    return Due(log=True, sample=sample, checkpoint=checkpoint, validate=validate)


def _step(callback: TensorBoardTracking, worker, record: StepRecord, due: Due) -> None:
    """One report step as the loop makes it: the record appended, SampleGrids' grid written, then
    the tracker's on_report."""
    worker.state.step = record.step
    worker.state.history.append(record)
    if due.sample:
        grid = Path(worker.staged.sample_grid(f"step_{record.step:06d}"))
        grid.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 16), (200, 30, 30)).save(grid)
    callback.on_report(worker, due)


def _finish(callback: TensorBoardTracking, worker) -> None:
    """The loop's end: on_train_end, then rank 0 uploads its staged outputs."""
    callback.on_train_end(worker)
    upload_directory(worker.staged.outputs, worker.plan.layout.outputs, worker.storage)


def _read(folder: str) -> ea.EventAccumulator:
    keep_all = {ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0}
    return ea.EventAccumulator(folder, size_guidance=keep_all).Reload()


def _scalars(acc: ea.EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, pytest.approx(e.value)) for e in acc.Scalars(tag)]


def _text(acc: ea.EventAccumulator, tag: str) -> str:
    return acc.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


def test_scalars_validation_image_and_config_at_their_steps(tmp_path):
    cfg = _cfg(tmp_path)
    callback = TensorBoardTracking.for_run(cfg)
    worker = _worker(cfg, tmp_path / "staging")
    _step(callback, worker, _record(2, 0.5), _due())
    _step(callback, worker, _record(4, 0.4, val=0.45, val_step=4), _due(sample=True, validate=True))
    _step(callback, worker, _record(6, 0.3, val=0.45, val_step=4), _due(checkpoint=True))
    _finish(callback, worker)

    acc = _read(worker.plan.layout.tensorboard)
    assert _scalars(acc, "train/loss") == [(2, 0.5), (4, 0.4), (6, 0.3)]
    assert _scalars(acc, "train/ambient_loss") == [(2, 0.45), (4, 0.36), (6, 0.27)]
    assert [e.step for e in acc.Scalars("train/lr")] == [2, 4, 6]
    assert _scalars(acc, "train/images_per_second")[0] == (2, 12.5)
    assert _scalars(acc, "train/data_wait_seconds")[0] == (2, 0.1)
    assert _scalars(acc, "train/data_wait_fraction")[0] == (2, 0.25)
    assert "train/consistency_loss" not in acc.Tags()["scalars"]  # None on every step
    assert _scalars(acc, tracking.VALIDATION_TAG) == [(4, 0.45)]  # measured once, logged once
    (image,) = acc.Images(tracking.GRID_TAG)
    assert (image.step, image.width, image.height) == (4, 24, 16)
    config = _text(acc, tracking.CONFIG_TAG)
    assert '"name": "tb"' in config and "***" in config and SECRET not in config


def test_other_ranks_never_touch_the_tracker(tmp_path):
    cfg = _cfg(tmp_path)
    callback = TensorBoardTracking.for_run(cfg)
    worker = _worker(cfg, tmp_path / "staging", rank=1)
    _step(callback, worker, _record(2, 0.5), _due(sample=True, checkpoint=True))
    callback.on_train_end(worker)
    assert not Path(worker.staged.tensorboard).exists()
    assert not Path(worker.plan.layout.tensorboard).exists() or not any(
        Path(worker.plan.layout.tensorboard).iterdir()
    )


def test_resume_purges_the_steps_after_the_checkpoint(tmp_path):
    cfg = _cfg(tmp_path)
    first = TensorBoardTracking.for_run(cfg)
    worker = _worker(cfg, tmp_path / "attempt-1")
    _step(first, worker, _record(2, 0.9), _due())
    _step(first, worker, _record(4, 0.8), _due(checkpoint=True))
    _step(first, worker, _record(6, 0.7), _due(sample=True))  # uploaded, then the attempt fails
    history = worker.state.history[:2]  # what the checkpoint at step 4 kept

    time.sleep(1.1)  # event files are read in name order, which starts with the second they were opened
    restored = LoopState(step=4, history=list(history), resumed_from_step=4)
    second = TensorBoardTracking.for_run(cfg)
    worker = _worker(cfg, tmp_path / "attempt-2", state=restored)
    _step(second, worker, _record(6, 0.65), _due())
    _step(second, worker, _record(8, 0.6), _due(sample=True, checkpoint=True))
    _finish(second, worker)

    acc = _read(worker.plan.layout.tensorboard)
    assert len(list(Path(worker.plan.layout.tensorboard).glob("events.out.tfevents.*"))) == 2
    assert _scalars(acc, "train/loss") == [(2, 0.9), (4, 0.8), (6, 0.65), (8, 0.6)]
    raw = ea.EventAccumulator(worker.plan.layout.tensorboard, purge_orphaned_data=False).Reload()
    assert [e.step for e in raw.Scalars("train/loss")] == [2, 4, 6, 6, 8]  # both attempts' step 6 are kept
    assert [e.step for e in acc.Images(tracking.GRID_TAG)] == [8]  # step 6's grid was purged too


def test_a_failing_writer_is_reported_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    cfg = _cfg(tmp_path)
    callback = TensorBoardTracking.for_run(cfg)
    worker = _worker(cfg, tmp_path / "staging")
    real = tracking._writer

    def breaking(*args, **kwargs):
        writer = real(*args, **kwargs)
        calls = []

        def add_scalar(*a, **k):
            calls.append(a)
            if len(calls) > 3:
                raise OSError("disk full")
            return type(writer).add_scalar(writer, *a, **k)

        writer.add_scalar = add_scalar
        return writer

    monkeypatch.setattr(tracking, "_writer", breaking)
    for step in (2, 4, 6):
        _step(callback, worker, _record(step, 1.0 / step), _due(sample=True))
    _finish(callback, worker)
    callback.on_run_end(_run(cfg), _summary(cfg, steps=6))  # the driver's part is off too

    lines = [line for line in capsys.readouterr().out.splitlines() if "tracking.tensorboard failed" in line]
    assert len(lines) == 1
    assert "at step 2" in lines[0] and "disk full" in lines[0] and "goes on" in lines[0]


def _run(cfg: FinetuneConfig):
    return SimpleNamespace(cfg=cfg, plan=SimpleNamespace(layout=RunLayout.of(cfg.run.storage_path, "tb")))


def _summary(cfg: FinetuneConfig, steps: int, showcase: dict | None = None) -> RunSummary:
    layout = RunLayout.of(cfg.run.storage_path, cfg.run.name)
    fields = {f.name: None for f in dataclasses.fields(RunSummary)}
    return RunSummary(
        **{
            **fields,
            "run": cfg.run.name,
            "status": "completed",
            "steps": steps,
            "images_seen": 96,
            "final_loss": 0.25,
            "final_val_ambient_loss": 0.3,
            "first_loss": 0.9,
            "outputs": layout.outputs,
            "exported_model": layout.model,
            "wall_seconds": 12.0,
            "history": [],
            "config": {},
            "showcase": showcase,
        }
    )


def test_the_driver_logs_the_summary_showcase_and_export_at_the_last_step(tmp_path):
    cfg = _cfg(tmp_path)
    callback = TensorBoardTracking.for_run(cfg)
    run = _run(cfg)
    layout = run.plan.layout
    Image.new("RGB", (30, 10), (0, 90, 200)).save(layout.comparison)
    summary = _summary(cfg, steps=8, showcase={"adherence": {"base": 0.5, "finetuned": 0.75}})
    assert callback.on_run_end(run, summary) is summary

    acc = _read(layout.tensorboard)
    assert _scalars(acc, "summary/final_loss") == [(8, 0.25)]
    assert _scalars(acc, "summary/final_val_ambient_loss") == [(8, 0.3)]
    assert _scalars(acc, "summary/images_seen") == [(8, 96)]
    assert _scalars(acc, "showcase/adherence/finetuned") == [(8, 0.75)]
    (image,) = acc.Images(tracking.SHOWCASE_TAG)
    assert (image.step, image.width, image.height) == (8, 30, 10)
    assert layout.model in _text(acc, tracking.EXPORT_TAG)


def test_a_sweep_trial_logs_its_axes_as_hparams(tmp_path):
    cfg = _cfg(tmp_path)
    callback = TensorBoardTracking.for_run(cfg, {"sigma_train": 0.3, "consistency_weight": 0.0})
    worker = _worker(cfg, tmp_path / "staging")
    _step(callback, worker, _record(2, 0.5), _due())
    _finish(callback, worker)

    acc = _read(worker.plan.layout.tensorboard)
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    assert '"sigma_train": 0.3' in _text(acc, tracking.AXES_TAG)


def test_an_unwritable_location_fails_before_training_naming_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = FinetuneConfig(run={"name": "tb", "storage_path": str(blocker / "runs")})
    with pytest.raises(
        StorageError, match=r"tracking\.tensorboard: cannot write event files to .*tensorboard"
    ):
        standard_callbacks(cfg)
    off = FinetuneConfig.model_validate({**cfg.model_dump(), "tracking": {"tensorboard": False}})
    assert not any(isinstance(c, TensorBoardTracking) for c in standard_callbacks(off))


def test_the_tracker_follows_the_pictures_it_reads(tmp_path):
    callbacks = standard_callbacks(_cfg(tmp_path), showcase=True)
    kinds = [type(c) for c in callbacks]
    assert kinds.index(SampleGrids) < kinds.index(Showcase) < kinds.index(TensorBoardTracking)
    assert not list((tmp_path / "runs" / "tb" / "outputs" / "tensorboard").iterdir())  # probe removed


def test_the_tracking_section_is_validated():
    assert FinetuneConfig().tracking.tensorboard is True
    with pytest.raises(ValidationError, match="mlflow"):
        FinetuneConfig(tracking={"mlflow": True})
    with pytest.raises(ValidationError, match="tensorboard"):
        FinetuneConfig(tracking={"tensorboard": "sometimes"})
