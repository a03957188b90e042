"""The README's sweep as a new user runs it: ``python jobs/sweep.py`` on the demo config from the
repository root, with its relative ``runs/...`` paths (made small with --set); and a sweep in which no
trial completes exits non-zero naming each trial's error."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ambient.cli import run_job
from ambient.config import load_config
from ambient.tune import SweepConfig, run_sweep

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

SMALL = [
    "space.sigma_train=[1.0]",
    "space.consistency_weight=[0.0]",
    "asha.enabled=false",
    "memorization.enabled=false",
    "quality_samples=4",
    "quality_steps=2",
    "holdout_rows=8",
    "base.train.max_steps=4",
    "base.train.log_every=2",
    "base.train.checkpoint_every=4",
    "base.validation.every_steps=2",
    "base.validation.num_steps=2",
    "base.validation.rows=8",
    "base.validation.prompts=[a red circle on a blue background]",
]


def repository_root(tmp_path: Path) -> Path:
    """A repository root whose runs/ is the test's own: jobs/ is this checkout's (a symlink), so
    ``python jobs/sweep.py`` reads the real demo config and writes under tmp_path/runs."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "jobs").symlink_to(ROOT / "jobs")
    return root


def test_readme_demo_sweep_runs_from_the_repository_root(tmp_path, tiny_model):
    root = repository_root(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "jobs/sweep.py", *[a for s in SMALL for a in ("--set", s)]]
    out = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1500)
    tail = (out.stdout + out.stderr)[-3000:]
    assert out.returncode == 0, tail
    sweep = root / "runs" / "tune" / "sweep-demo"
    assert out.stdout.strip().splitlines()[-1] == str(sweep / "results.md"), tail
    (row,) = list(csv.DictReader((sweep / "results.csv").read_text().splitlines()))
    assert row["status"] == "completed", tail
    assert (root / "runs" / "demo" / "shards" / "manifest.json").is_file()  # the demo default, prepared
    assert (root / "runs" / "demo" / "holdout" / "manifest.json").is_file()


def test_sweep_without_a_completed_trial_exits_nonzero_with_each_error(
    tmp_path, tiny_model, demo_shards, ray_session, capsys
):
    overrides = [
        *SMALL,
        "space.consistency_weight=[0.0, 1.0]",
        "max_concurrent_trials=2",
        f"storage_path={tmp_path}",
        f"base.model.path={tiny_model}",
        f"base.data.uri={demo_shards}",
        "base.data.prepare_if_missing=false",
        "base.scaling.num_workers=1",
        "base.train.batch_size=1000",  # more than the 64 rows: every trial fails in its first lines
    ]
    cfg = load_config(SweepConfig, None, overrides)
    with pytest.raises(SystemExit) as exit_info:
        run_job(run_sweep, cfg)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "no trial of the sweep completed (2 trials;" in err
    failed = [line for line in err.splitlines() if line.startswith("  trial ")]
    assert len(failed) == 2, err
    assert all("train.batch_size 1000" in line for line in failed), err
