"""The sweep driver: Ray Tune over noise levels and consistency weights, each trial a full Ray Train run.

Train V2 under Tune: the sweep checks its base config once (ambient.train.trainer.FinetuneRun's
preflight); each trial is a driver function that trains its config as a FinetuneRun with a
TuneReportCallback (Train's reports become the trial's results, so ASHA sees the validation loss as it
is reported), then scores the exported model and reports the final metrics.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from ambient.cli import JobFailed, first_line
from ambient.data.config import (
    DestinationConfig,
    EncodeConfig,
    NoiseConfig,
    PrepareShardsConfig,
    SourceConfig,
)
from ambient.data.holdout import read_rows
from ambient.data.schema import MANIFEST_NAME
from ambient.data.validate import load_manifest
from ambient.models.ref import ModelRef
from ambient.storage import (
    exists,
    file_infos,
    is_s3,
    join,
    read_bytes,
    resolve_filesystem,
    upload_directory,
)
from ambient.train.config import FinetuneConfig
from ambient.train.layout import RunLayout
from ambient.train.run_callbacks import standard_callbacks
from ambient.train.trainer import FinetuneRun, init_ray

from .config import SweepConfig
from .quality import trial_quality
from .report import write_reports
from .result import TrialResult
from .trial import shown_axes, trial_config

TRIALS = "trials"  # the trials' runs, in the sweep's folder
NO_MEMORIZATION_NOTE = (
    "memorization score: disabled (memorization.enabled = false); the Pareto plot uses the training noise "
    "level as the memorization axis"
)


def _log(message: str) -> None:
    print(f"[ambient sweep] {message}", flush=True)


def trial_memorization(model_dir: str, cfg: FinetuneConfig, memorization: dict) -> float | None:
    """The audit's score for the trial's export, or None (with the reason logged) where it cannot run."""
    if not memorization["enabled"]:
        return None
    from ambient.eval import AuditConfig, memorization_score

    items = memorization["items_uri"] or cfg.data.uri
    try:
        return memorization_score(
            model_dir,
            items,
            config=AuditConfig(items={"count": memorization["count"]}),
            storage=cfg.storage.resolved(),
        )
    except ValueError as err:  # e.g. noisy non-synthetic shards: there are no originals to attack
        _log(f"memorization score not measured for {cfg.run.name}: {err}")
        return None


def trial_layout(sweep_uri: str, trial_id: str) -> RunLayout:
    """Where a trial's run lives: ``trials/trial-<id>`` in the sweep's folder."""
    return RunLayout.of(join(sweep_uri, TRIALS), f"trial-{trial_id}")


def run_trial(
    params: dict, *, base: dict, model_source: str, sweep_uri: str, quality: dict, memorization: dict
) -> None:
    layout = trial_layout(sweep_uri, tune.get_context().get_trial_id())
    cfg = trial_config(base, params, layout.name, layout.storage_path)
    run = FinetuneRun(cfg, model_source)  # the sweep checked the base's inputs and prepared the data
    # The trial's axes become its tracker run's parameters (one TensorBoard folder per trial).
    callbacks = standard_callbacks(cfg, hparams=shown_axes(params))
    summary = run.train(callbacks, ray_callbacks=[TuneReportCallback()])
    summary_uri = run.layout.summary
    holdout = read_rows(cfg.validation.data_uri, cfg.storage.resolved(), quality["samples"])
    quality_scores = trial_quality(
        str(ModelRef(summary.exported_model).local(cfg.storage.resolved())),
        holdout,
        mode=run.plan.sampling_mode,
        sampling_sigma_n=run.plan.sigma_n,
        num_steps=quality["steps"],
        micro_batch=cfg.validation.sample_micro_batch,
    )
    memorized = trial_memorization(summary.exported_model, cfg, memorization)
    trial = TrialResult.of(
        summary,
        summary_uri,
        memorization=memorized,
        memorization_weight=memorization["weight"],
        quality_sw=quality_scores["quality_sw"],
        adherence=quality_scores["adherence"],
    )
    tune.report({**trial.to_dict(), "done": True})


def plan_holdout(cfg: SweepConfig) -> tuple[str, bool]:
    """Before any cluster work: the held-out set every trial validates on, and whether the demo's must
    be prepared (beside a local data.uri; other images, other noise). A given one was checked by the
    preflight."""
    base = cfg.base
    if base.validation.data_uri:
        return base.validation.data_uri, False
    if is_s3(base.data.uri):
        raise ValueError("base.validation.data_uri: set a held-out shard set for a sweep on S3 data")
    uri = str(Path(base.data.uri).parent / "holdout")
    return uri, not exists(join(uri, MANIFEST_NAME), base.storage.resolved())


def prepare_holdout(cfg: SweepConfig, uri: str, model_source: str, data_sigma_n: float) -> None:
    from ambient.data.prepare import prepare_shards

    _log(f"preparing {cfg.holdout_rows} held-out synthetic rows at {uri}")
    prepare_shards(
        PrepareShardsConfig(
            source=SourceConfig(count=cfg.holdout_rows, seed=1),  # images the training set does not hold
            destination=DestinationConfig(uri=uri),
            encode=EncodeConfig(model=model_source),
            noise=NoiseConfig(sigma_n=data_sigma_n, seed=1),
            storage=cfg.base.storage,
        )
    )


def check_space(cfg: SweepConfig, data_max_sigma_n: float) -> None:
    low = [s for s in cfg.space.axes().get("sigma_train", []) if s < data_max_sigma_n]
    if low:
        raise ValueError(
            f"space.sigma_train: {low} below the data's sigma_n {data_max_sigma_n:.4g} "
            "(training can only add noise, never remove it)"
        )


def _param_space(cfg: SweepConfig) -> dict:
    axes = cfg.space.axes()
    if not axes:
        raise ValueError("space: give at least one axis to search (e.g. space.consistency_weight)")
    wrap = tune.grid_search if cfg.search.method == "grid" else tune.choice
    return {k: wrap(v) for k, v in axes.items()}


def _tune_config(cfg: SweepConfig) -> tune.TuneConfig:
    search_alg = None
    if cfg.search.method == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(metric=cfg.metric, mode="min", seed=cfg.search.seed)
    scheduler = None
    if cfg.asha.enabled:
        scheduler = ASHAScheduler(
            time_attr="step",
            # One past the budget: a trial that reaches max_t is stopped, and the last step must still
            # let the trial export its model and score it.
            max_t=cfg.base.train.max_steps + 1,
            grace_period=cfg.asha.grace_period,
            reduction_factor=cfg.asha.reduction_factor,
        )
    return tune.TuneConfig(
        metric=cfg.metric,
        mode="min",
        search_alg=search_alg,
        scheduler=scheduler,
        num_samples=cfg.search.num_samples,
        max_concurrent_trials=cfg.max_concurrent_trials,
    )


def memorization_note(cfg: SweepConfig) -> str:
    """What the memorization column measures, logged and written with the reports."""
    return (
        NO_MEMORIZATION_NOTE
        if not cfg.memorization.enabled
        else (
            f"memorization score: the audit's one-step reconstruction attack at t=900 on {cfg.memorization.count} "
            f"training items; objective = val_ambient_loss + {cfg.memorization.weight} x memorization"
        )
    )


def run_sweep(cfg: SweepConfig) -> str:
    """Run (or resume) the sweep; returns the path of its results table (results.md)."""
    base = cfg.base
    storage = base.storage.resolved()
    # Every input is checked before Ray starts: the model, the data, the held-out set, the search space
    # (against the data's noise: after Ray starts where the demo's data is still to be prepared).
    run = FinetuneRun.preflight(base, holdout_field="base.validation.data_uri")
    data_ready = not run.prepare_demo_data
    if data_ready:
        check_space(cfg, load_manifest(base.data.uri, storage).sigma_n.max)
    holdout_uri, holdout_missing = plan_holdout(cfg)
    per_trial = base.scaling.num_workers * base.scaling.cpus_per_worker + cfg.trial_cpus
    init_ray(cfg.ray_address, per_trial * cfg.max_concurrent_trials)
    run.prepare_data()
    manifest = load_manifest(base.data.uri, storage)
    if not data_ready:
        check_space(cfg, manifest.sigma_n.max)
    if holdout_missing:
        prepare_holdout(cfg, holdout_uri, run.model_source, manifest.noise.sigma_n)
    base_dump = base.model_dump()
    base_dump["validation"]["data_uri"] = holdout_uri

    sweep_uri = sweep_location(cfg)
    fs, tune_dir = (None, sweep_uri) if not is_s3(sweep_uri) else resolve_filesystem(sweep_uri, storage)
    # Tune's storage_path: the sweep's own parent folder, as a path inside ``fs`` on S3.
    parent = sweep_storage(cfg) if fs is None else resolve_filesystem(sweep_storage(cfg), storage)[1]
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            # Trials run in Ray workers, which may not share the driver's AWS_* environment: they get
            # the storage settings resolved here (kept out of base_dump, which the reports write).
            base={**base_dump, "storage": storage.model_dump()},
            model_source=run.model_source,
            sweep_uri=sweep_uri,
            quality={"samples": cfg.quality_samples, "steps": cfg.quality_steps},
            memorization=cfg.memorization.model_dump(),
        ),
        {"cpu": cfg.trial_cpus},
    )
    note = memorization_note(cfg)
    _log(note)
    with aws_secrets_hidden_from_ray():  # trials get the resolved storage instead (above)
        if tune.Tuner.can_restore(tune_dir, storage_filesystem=fs):
            _log(f"resuming the interrupted sweep at {sweep_uri} (finished trials are kept)")
            tuner = tune.Tuner.restore(
                tune_dir, trainable=trainable, resume_errored=True, storage_filesystem=fs
            )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=_param_space(cfg),
                tune_config=_tune_config(cfg),
                run_config=tune.RunConfig(name=cfg.name, storage_path=parent, storage_filesystem=fs),
            )
        grid = tuner.fit()
    return write_sweep_outputs([result_row(result) for result in grid], sweep_uri, cfg, base_dump, note)


def result_row(result) -> dict:
    """A trial's row of the results table from its Tune result: the trial, its parameters, its status,
    the TrialResult fields it reported (a trial stopped early has only the training reports' fields)."""
    metrics = result.metrics or {}
    return {
        "trial": metrics.get("trial_id") or Path(result.path).name,
        **{k: v for k, v in (result.config or {}).items()},
        "status": "completed"
        if metrics.get("quality_sw") is not None
        else ("error" if result.error else "stopped early"),
        **{name: metrics.get(name) for name in TrialResult.fields()},
        "error": first_line(result.error) if result.error else None,
    }


@contextmanager
def aws_secrets_hidden_from_ray():
    """Ray Tune copies AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the driver's environment into each
    trainable's runtime_env, and Ray's runtime-env agent logs that in plain text. The trials get the
    storage settings resolved on the driver instead, so the variables are hidden while Tune runs."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def sweep_location(cfg: SweepConfig) -> str:
    """The sweep's folder: ``storage_path/name``, an s3:// URI or an absolute local path (resolved here on
    the driver: Tune runs trials in their own working directories)."""
    return join(sweep_storage(cfg), cfg.name)


def sweep_storage(cfg: SweepConfig) -> str:
    """storage_path as an s3:// URI or an absolute local path."""
    return cfg.storage_path if is_s3(cfg.storage_path) else str(Path(cfg.storage_path).absolute())


def write_sweep_outputs(
    rows: list[dict], sweep_uri: str, cfg: SweepConfig, base_dump: dict, note: str
) -> str:
    """Each trial's last sample grid (grids/), the results table, best config and Pareto plot, written
    beside the trials (staged locally and uploaded when the sweep lives on S3); returns the results
    table's path or URI."""
    storage = cfg.base.storage.resolved()
    if is_s3(sweep_uri):
        with tempfile.TemporaryDirectory(prefix="ambient-sweep-") as staging:
            write_local_outputs(rows, Path(staging), sweep_uri, cfg, base_dump, note)
            upload_directory(Path(staging), sweep_uri, storage)
        table = join(sweep_uri, "results.md")
    else:
        table = write_local_outputs(rows, Path(sweep_uri), sweep_uri, cfg, base_dump, note)
    check_completed(rows, sweep_uri)
    return table


def write_local_outputs(
    rows: list[dict], local: Path, sweep_uri: str, cfg: SweepConfig, base_dump: dict, note: str
) -> str:
    """The grids and reports into the folder ``local``; rows name the grids by their place in sweep_uri."""
    storage = cfg.base.storage.resolved()
    (local / "grids").mkdir(parents=True, exist_ok=True)
    for row in rows:
        if not row["summary"]:
            continue
        samples_uri = trial_layout(sweep_uri, row["trial"]).samples
        samples = sorted(name for name in file_infos(samples_uri, storage) if name.endswith(".png"))
        if samples:
            (local / "grids" / f"{row['trial']}.png").write_bytes(
                read_bytes(join(samples_uri, samples[-1]), storage)
            )
            row["sample_grid"] = join(sweep_uri, "grids", f"{row['trial']}.png")
    return write_reports(
        [{k: v for k, v in r.items() if k != "error"} for r in rows], local, cfg, base_dump, note
    )


def check_completed(rows: list[dict], sweep_uri: str) -> None:
    """A sweep in which no trial completed failed: JobFailed with each trial's first error line."""
    if any(r["status"] == "completed" for r in rows):
        return
    lines = [f"  trial {r['trial']}: {r['error'] or r['status']}" for r in rows]
    raise JobFailed(
        f"no trial of the sweep completed ({len(rows)} trials; results in {sweep_uri}):\n" + "\n".join(lines)
    )
