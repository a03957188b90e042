"""The run's typed records: one name per quantity (Prometheus, Ray Train reports, summary.json, the sweep
table), and the loop's due-checks: every report carries the held-out loss Ray Tune checks for."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ambient.config import load_config
from ambient.metric_names import TRAIN_METRICS, MetricSpec
from ambient.train.config import FinetuneConfig
from ambient.train.due import Due
from ambient.train.records import (
    RunSummary,
    StepRecord,
    WorkerSummary,
    check_metric_specs,
    metric_fields,
    metric_values,
)
from ambient.tune.config import SweepConfig
from ambient.tune.report import METRICS
from ambient.tune.result import TrialResult


def record(step: int = 1, **values) -> StepRecord:
    base = dict(
        step=step,
        loss=0.5,
        ambient_loss=0.4,
        consistency_loss=0.1,
        lr=1e-4,
        images_per_second=10.0,
        step_seconds=0.4,
        data_wait_seconds=0.1,
        images=4,
    )
    return StepRecord(**{**base, **values})


def test_every_step_record_metric_has_a_metric_spec_and_back():
    fields = metric_fields()
    specs = {s.name: s.kind for s in TRAIN_METRICS}
    assert fields == specs, (
        f"only in StepRecord: {fields.keys() - specs}; only in TRAIN_METRICS: {specs.keys() - fields}"
    )
    check_metric_specs(TRAIN_METRICS)
    # Each exported field is named ambient_train_<field>.
    names = {f.name for f in dataclasses.fields(StepRecord)}
    assert all(name.removeprefix("ambient_train_") in names for name in fields)


def test_a_metric_without_its_other_half_is_named():
    missing = tuple(s for s in TRAIN_METRICS if s.name != "ambient_train_ambient_loss")
    with pytest.raises(
        ValueError, match="ambient_train_ambient_loss: a StepRecord field without a MetricSpec"
    ):
        check_metric_specs(missing)
    extra = (*TRAIN_METRICS, MetricSpec("ambient_train_ambient_los", "gauge", "a typo"))
    with pytest.raises(
        ValueError, match="ambient_train_ambient_los: a MetricSpec without a StepRecord field"
    ):
        check_metric_specs(extra)
    kinds = tuple(dataclasses.replace(s, kind="gauge") if s.kind == "counter" else s for s in TRAIN_METRICS)
    with pytest.raises(ValueError, match="ambient_train_images: StepRecord says counter"):
        check_metric_specs(kinds)


def test_an_unknown_key_raises_naming_it():
    with pytest.raises(ValueError, match=r"unknown StepRecord field\(s\) \['ambient_los'\]"):
        StepRecord.from_dict({**record().to_dict(), "ambient_los": 0.3})
    with pytest.raises(TypeError):
        StepRecord(**{**record().to_dict(), "ambient_los": 0.3})
    with pytest.raises(TypeError, match="expected a StepRecord, got dict"):
        metric_values({"ambient_loss": 0.3})  # what TrainMetrics.record took before: keys went unchecked


def test_metric_values_skip_what_holds_no_value():
    values = metric_values(record(consistency_loss=None))
    assert "ambient_train_consistency_loss" not in values and "ambient_train_checkpoint_seconds" not in values
    assert values["ambient_train_ambient_loss"] == 0.4 and values["ambient_train_images"] == 4.0
    assert not any("val_" in name for name in values)  # not a metric: a run may have no held-out set


def test_a_history_from_before_the_records_is_read():
    old = [
        {"step": 2, "loss": 1.0, "ambient": 0.9, "consistency": None, "lr": 1e-4},
        {"step": 4, "loss": 0.8, "ambient": 0.7, "consistency": 0.1, "lr": 1e-4, "val_ambient": 0.6},
    ]
    history = [StepRecord.from_dict(h) for h in old]
    assert history[1].ambient_loss == 0.7 and history[1].consistency_loss == 0.1
    assert (history[1].val_ambient_loss, history[1].val_step) == (0.6, 4)
    assert history[0].val_step is None and history[0].images_per_second is None
    assert all(StepRecord.from_dict(r.to_dict()) == r for r in history)  # and written back as records


def test_summary_json_keeps_the_keys_its_readers_use():
    history = [
        record(2, loss=1.0),
        record(4, loss=0.8, consistency_loss=None).with_validation((0.6, 4)),
        record(5, loss=0.7, ambient_loss=0.65, consistency_loss=None).with_validation((0.6, 4)),
    ]
    worker = WorkerSummary(
        steps=5,
        images_seen=40,
        resumed_from_step=None,
        resumes=[],
        data_position=40,
        history=history,
        images_per_second=9.5,
        data_wait_fraction=0.2,
    )
    worker = WorkerSummary.from_dict(json.loads(json.dumps(worker.to_dict())))
    assert worker.history == history
    finals = RunSummary.finals(worker.history)
    assert finals == {
        "final_loss": 0.7,
        "final_ambient_loss": 0.65,
        "final_consistency_loss": 0.1,  # the last step it ran on
        "final_val_ambient_loss": 0.6,
        "first_loss": 1.0,
    }
    fields = {f.name for f in dataclasses.fields(RunSummary)}
    # What tests, docs, benchmarks and the base-model release read from summary.json.
    read = {"run", "steps", "images_seen", "resumed_from_step", "restarts", "resumed_from_steps",
            "data_split", "data_position", "final_loss", "first_loss", "final_consistency_loss",
            "final_val_ambient_loss", "images_per_second", "wall_seconds", "sigma_n", "data",
            "model_source", "outputs", "exported_model", "loss_curve", "sample_grids",
            "latest_checkpoint", "checkpoints", "history", "config", "showcase"}  # fmt: skip
    assert read <= fields, read - fields


def test_the_sweep_metric_and_table_columns_are_record_fields():
    metric = SweepConfig().metric
    assert metric in {f.name for f in dataclasses.fields(StepRecord)}  # every training report can carry it
    assert metric in TrialResult.fields()  # and the trial's final report
    assert METRICS == ("status", "step", "val_ambient_loss", "quality_sw", "adherence", "memorization",
                       "images_per_second")  # fmt: skip
    assert "step" in TrialResult.fields()  # ASHA's time attribute (tune.sweep)


def config(max_steps: int, log_every: int, every_steps: int, checkpoint_every: int) -> FinetuneConfig:
    values = {
        "train.max_steps": max_steps,
        "train.log_every": log_every,
        "train.checkpoint_every": checkpoint_every,
        "validation.every_steps": every_steps,
    }
    return load_config(FinetuneConfig, None, [f"{k}={v}" for k, v in values.items()])


def run_reports(cfg: FinetuneConfig, *, has_holdout: bool, start: int = 0, last_val=None) -> list:
    """The loop's reports, step by step as TrainingWorker makes them: (step, due, reported dict)."""
    reports = []
    for step in range(start + 1, cfg.train.max_steps + 1):
        due = Due.at(step, cfg.train, cfg.validation, has_holdout=has_holdout, validated=last_val is not None)
        if due.validate:
            last_val = (1.0 / step, step)
        if due.report:
            reports.append((step, due, record(step).with_validation(last_val).report()))
    return reports


@pytest.mark.parametrize("log_every, every_steps", [(2, 3), (3, 2), (1, 4), (5, 10), (2, 2)])
def test_every_report_carries_the_held_out_loss(log_every, every_steps):
    """Ray Tune (tune.sweep: TuneConfig(metric="val_ambient_loss")) fails a trial whose report lacks
    its metric: with train.log_every != validation.every_steps some reports fell between validations."""
    cfg = config(max_steps=20, log_every=log_every, every_steps=every_steps, checkpoint_every=20)
    metric = SweepConfig().metric
    reports = run_reports(cfg, has_holdout=True)
    missing = [step for step, _, reported in reports if metric not in reported]
    assert not missing, f"reports without {metric} at steps {missing}"
    # Carried, not re-measured: validation on the grid steps and on the first report only.
    measured = [step for step, due, _ in reports if due.validate]
    grid = [s for s in range(1, 21) if s % every_steps == 0 or s == 20]
    assert measured == sorted({reports[0][0], *grid})
    for step, _, reported in reports:
        assert reported["val_step"] == max(s for s in measured if s <= step)


def test_due_checks_keep_their_schedule():
    cfg = config(max_steps=7, log_every=2, every_steps=3, checkpoint_every=4)
    reports = run_reports(cfg, has_holdout=False)
    assert [s for s, _, _ in reports] == [2, 3, 4, 6, 7]
    assert [s for s, d, _ in reports if d.log] == [2, 4, 6, 7]  # the last step always logs,
    assert [s for s, d, _ in reports if d.sample] == [3, 6, 7]  # samples
    assert [s for s, d, _ in reports if d.checkpoint] == [4, 7]  # and checkpoints
    assert not any(d.validate or "val_ambient_loss" in r for _, d, r in reports)  # no held-out set


def test_a_resumed_run_carries_its_checkpointed_held_out_loss():
    cfg = config(max_steps=8, log_every=2, every_steps=6, checkpoint_every=4)
    reports = run_reports(cfg, has_holdout=True, start=4, last_val=(0.5, 2))
    assert [(s, d.validate, r["val_step"]) for s, d, r in reports] == [(6, True, 6), (8, True, 8)]
    reports = run_reports(config(8, 1, 6, 4), has_holdout=True, start=4, last_val=(0.5, 2))
    assert reports[0][0] == 5 and not reports[0][1].validate and reports[0][2]["val_step"] == 2


def test_reports_leave_out_what_holds_no_value():
    reported = record(3, consistency_loss=None).report()
    assert "consistency_loss" not in reported and "checkpoint_seconds" not in reported
    assert reported["ambient_loss"] == 0.4 and reported["step"] == 3
