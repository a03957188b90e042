"""A sweep in which no trial completes exits non-zero naming each trial's error. (The README's sweep as a
new user runs it, from the repository root on the demo config's relative paths: test_sweep.py.)"""

from __future__ import annotations

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
