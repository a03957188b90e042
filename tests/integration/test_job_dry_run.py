"""The job scripts run as a user runs them, each in a subprocess: ``--dry-run`` checks the config
without starting anything and shows no secret, and ``python -m benchmarks.exactness`` (the documented
command) finds its package from the repository root. The config checks themselves, in-process, are in
tests/unit (test_config_errors.py, test_data_config.py, test_audit_units.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hunter2-Zq9"
pytestmark = pytest.mark.integration


def test_job_prints_no_secret_for_a_typo():
    job = [sys.executable, str(ROOT / "jobs" / "prepare_shards.py")]
    out = subprocess.run(
        [*job, "--dry-run", "--set", f"storage.secret_acces_key={SECRET}"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "storage.secret_acces_key: unknown field" in out.stderr
    assert SECRET not in out.stderr + out.stdout


def test_job_dry_run_validates_without_starting_anything():
    job = [sys.executable, str(ROOT / "jobs" / "prepare_shards.py")]
    ok = subprocess.run(
        [*job, "--dry-run", "--set", "storage.secret_access_key=hush"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "config is valid" in ok.stdout and "hush" not in ok.stdout
    bad = subprocess.run([*job, "--set", "noise.t_n=100"], capture_output=True, text=True)
    assert bad.returncode == 2 and "give exactly one of noise.sigma_n" in bad.stderr


def test_job_dry_run_reports_a_missing_weights_path(tmp_path):
    missing = tmp_path / "dinov2-weights"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "audit.py"),
            "--dry-run",
            "--set",
            "features.kind=dinov2",
            "--set",
            f"features.weights={missing}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    assert "features.weights" in proc.stderr and str(missing) in proc.stderr
    ok = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "audit.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout[: ok.stdout.rindex("}") + 1])["attack"]["timesteps"] == [900.0]


@pytest.mark.timeout(120)
def test_module_runs_from_the_repository_root() -> None:
    """``python -m benchmarks.exactness`` (the documented command) finds the package from the root."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.exactness", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "--below-anchor" in out.stdout and "--chain-steps" in out.stdout
