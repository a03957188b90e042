"""The Ray Tune sweep: a grid of consistency weights (and a dotted-path axis), interrupted and resumed.

The grid runs as the README's sweep does: ``python jobs/sweep.py`` from a repository root on the demo
config's relative ``runs/...`` paths (the demo data prepared by the job itself), made small with --set;
interrupted with Ctrl-C once a trial has finished, then the same command again, which resumes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ambient.config import ConfigError, load_config
from ambient.train import FinetuneConfig
from ambient.tune import SweepConfig, run_sweep

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


GRID = [
    "name=grid",
    "space.sigma_train=[0.8]",
    "space.consistency_weight=[0.0, 1.0]",
    "space.paths={optim.weight_decay: [0.0]}",  # an axis by dotted path (one value: the grid stays 1x2)
    "asha.enabled=false",
    "max_concurrent_trials=1",  # the interrupt finds one trial done, one not
    "quality_samples=8",
    "quality_steps=3",
    "holdout_rows=8",
    "base.scaling.num_workers=1",
    "base.tracking.tensorboard=false",  # a trial's tracker: tests/unit/test_tracking.py
    "base.train.batch_size=4",
    "base.train.max_steps=6",
    "base.train.log_every=2",  # off the validation steps: Tune needs val_ambient_loss in every report
    "base.train.checkpoint_every=6",
    "base.validation.every_steps=3",
    "base.validation.num_steps=3",
    "base.validation.rows=8",
    "base.validation.prompts=[a red circle on a blue background]",
]


def overrides(storage: Path, model: str, shards: str) -> list[str]:
    """The grid on given storage, model and shards (the in-process tests)."""
    return [
        *GRID,
        f"storage_path={storage}",
        f"base.model.path={model}",
        f"base.data.uri={shards}",
        "base.data.prepare_if_missing=false",
    ]


def repository_root(tmp_path: Path) -> Path:
    """A repository root whose runs/ is the test's own: jobs/ is this checkout's (a symlink), so
    ``python jobs/sweep.py`` reads the real demo config and writes under tmp_path/repo/runs."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "jobs").symlink_to(ROOT / "jobs")
    return root


def finished_trials(sweep: Path) -> list[Path]:
    """Summaries of the trials Tune has recorded as done (their final report is in result.json)."""
    done = []
    for result in sweep.glob("*/result.json"):
        for line in result.read_text().splitlines():
            metrics = json.loads(line)
            if metrics.get("done") and metrics.get("summary"):
                done.append(Path(metrics["summary"]))
    return done


def test_invalid_search_spaces_are_rejected_before_any_trial(tmp_path, tiny_model, demo_shards, ray_session):
    args = overrides(tmp_path, tiny_model, demo_shards)
    with pytest.raises(ConfigError, match=r"space.consistency_weight.*>= 0"):
        load_config(SweepConfig, None, [*args, "space.consistency_weight=[-0.5, 1.0]"])
    cfg = load_config(SweepConfig, None, [*args, "space.sigma_train=[0.2, 1.0]"])
    with pytest.raises(ValueError, match=r"space.sigma_train: \[0.2\] below the data's sigma_n 0.5"):
        run_sweep(cfg)
    assert not (tmp_path / "grid").exists()  # nothing started


def test_readme_grid_sweep_is_interrupted_resumes_and_writes_its_reports(tmp_path, tiny_model):
    root = repository_root(tmp_path)
    # The default model (tiny_model: the committed base, cached), as a new user's run has it.
    command = [sys.executable, "jobs/sweep.py", *[a for x in GRID for a in ("--set", x)]]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each run its own local cluster
    sweep = root / "runs" / "tune" / "grid"
    # First attempt, interrupted once a trial has finished.
    proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 900
        while time.time() < deadline and not finished_trials(sweep):
            assert proc.poll() is None, "the sweep exited before any trial finished"
            time.sleep(1)
        finished_first = {p: p.stat().st_mtime for p in finished_trials(sweep)}
        assert finished_first, "no trial finished in time"
    finally:
        proc.send_signal(signal.SIGINT)  # Tune saves its state and stops (also when the test fails here)
        proc.wait(timeout=180)
    assert (root / "runs" / "demo" / "shards" / "manifest.json").is_file()  # the demo default, prepared
    assert (root / "runs" / "demo" / "holdout" / "manifest.json").is_file()

    # The same command again resumes (Tuner.restore) and ends with the table's path.
    out = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    tail = (out.stdout + out.stderr)[-3000:]
    assert out.returncode == 0, tail
    table = sweep / "results.md"
    assert out.stdout.strip().splitlines()[-1] == str(table), tail
    for path, mtime in finished_first.items():
        assert path.stat().st_mtime == mtime, f"finished trial {path.parent.parent.name} was rerun"
    rows = list(csv.DictReader((sweep / "results.csv").read_text().splitlines()))
    assert sorted((float(r["sigma_train"]), float(r["consistency_weight"])) for r in rows) == [
        (0.8, 0.0), (0.8, 1.0),
    ]  # fmt: skip
    for r in rows:
        assert r["status"] == "completed"
        assert float(r["val_ambient_loss"]) > 0 and float(r["quality_sw"]) > 0
        assert 0 <= float(r["memorization"]) <= 1  # the audit's score on the synthetic originals
        assert Path(r["sample_grid"]).is_file()
    assert table.read_text().startswith("# Sweep grid") and (sweep / "pareto.png").is_file()
    best = yaml.safe_load((sweep / "best_config.yaml").read_text())
    best_cfg = FinetuneConfig.model_validate(best)  # ready for jobs/finetune.py
    best_row = min(rows, key=lambda r: float(r["val_ambient_loss"]))
    assert best_cfg.consistency.weight == float(best_row["consistency_weight"])
    assert best_cfg.validation.data_uri == str(root / "runs" / "demo" / "holdout")
    summary = json.loads(Path(best_row["summary"]).read_text())
    assert summary["config"]["loss"]["sigma_train"] == float(best_row["sigma_train"])
    assert summary["config"]["optim"]["weight_decay"] == 0.0 == best_cfg.optim.weight_decay  # default 0.01
    assert all(float(r["optim.weight_decay"]) == 0.0 for r in rows)
