"""Every job: bad input is one clear line naming the field or path, exit status 2, before any cluster work
(the jobs are run as a user runs them; none of these cases may start Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ambient.cli import run_job
from ambient.config import load_config
from ambient.data import PrepareShardsConfig, prepare_shards

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
RAY_STARTED = "Started a local Ray instance"


def run(job: str, cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, str(ROOT / "jobs" / job), *[a for o in overrides for a in ("--set", o)]]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def assert_user_error(out: subprocess.CompletedProcess, *expected: str) -> None:
    last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
    assert out.returncode == 2, out.stderr[-2000:]
    assert last.startswith("error: ") and all(e in last for e in expected), out.stderr[-2000:]
    assert "Traceback" not in out.stderr and RAY_STARTED not in out.stderr


def test_prepare_shards_bad_inputs(tmp_path):
    assert_user_error(
        run("prepare_shards.py", tmp_path, "source.kind=folder", "source.path=no/such/images"),
        "source.path",
        str(tmp_path / "no" / "such" / "images"),
    )
    assert_user_error(run("prepare_shards.py", tmp_path, "encode.model=missing-model"), "encode.model")
    unreachable = [
        "destination.uri=s3://bucket/ds",
        "storage.endpoint_url=http://127.0.0.1:9",
        "storage.max_attempts=1",
    ]
    assert_user_error(run("prepare_shards.py", tmp_path, *unreachable), "s3://bucket/ds", "unreachable")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "manifest.json").write_text("{}")
    assert_user_error(
        # the demo config sets overwrite: true for its own re-runs; the default (false) refuses
        run("prepare_shards.py", tmp_path, f"destination.uri={existing}", "destination.overwrite=false"),
        "destination.uri",
        "overwrite",
    )


def test_prepare_shards_with_no_valid_rows_is_a_user_error(ray_session, tmp_path, capsys):
    src = tmp_path / "images"
    src.mkdir()
    (src / "a.png").write_bytes(b"not a png")
    (src / "a.txt").write_text("a caption")
    cfg = load_config(
        PrepareShardsConfig,
        None,
        [
            f"destination.uri={tmp_path / 'out'}",
            "source.kind=folder",
            f"source.path={src}",
            "encode.space=image",
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        run_job(prepare_shards, cfg)
    assert exit_info.value.code == 2
    assert "no valid rows to write to" in capsys.readouterr().err


def test_mistyped_data_uri_fails_before_ray_and_prepares_nothing(tmp_path):
    out = run("finetune.py", tmp_path, "data.uri=runs/demo/shard")  # the demo's path, mistyped
    assert_user_error(out, "data.uri", str(tmp_path / "runs" / "demo" / "shard"), "holds no dataset")
    assert not (tmp_path / "runs" / "demo" / "shard").exists()


def test_sweep_checks_the_held_out_set_before_ray(tmp_path):
    out = run("sweep.py", tmp_path, "base.validation.data_uri=held/out")
    assert_user_error(out, "base.validation.data_uri", str(tmp_path / "held" / "out"))
    assert not (tmp_path / "runs").exists()
