"""`ray job submit -- python jobs/finetune.py` against a head node this test starts (token auth,
explicit ports) and stops by its PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port, free_port_block

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def head_node(tmp_path_factory):
    # Every port explicit: the session's own Ray node already holds the defaults (e.g. its dashboard
    # agent on 52365), and a head whose job agent cannot bind accepts no job.
    gcs, dashboard, metrics, agent_http, agent_grpc, runtime_env, node_mgr, obj_mgr, client = (
        free_port() for _ in range(9)
    )
    workers = free_port_block(200)
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path_factory.mktemp("ray-head") / "head.log", "w")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(
        [
            str(RAY), "start", "--head", "--block",
            f"--port={gcs}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
            "--include-dashboard=true", f"--metrics-export-port={metrics}",
            f"--min-worker-port={workers}", f"--max-worker-port={workers + 199}",
            f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}", f"--node-manager-port={node_mgr}",
            f"--object-manager-port={obj_mgr}", f"--ray-client-server-port={client}",
            "--num-cpus=4", "--disable-usage-stats",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray head exited with {proc.returncode}; see {log.name}")
        try:
            if requests.get(f"{url}/api/version", timeout=2).status_code in (200, 401, 403):
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    else:
        pytest.fail(f"ray head's dashboard did not answer on {url}")
    yield {"url": url, "env": env}
    # Stop what we started, by PID: --block makes this process own the head's services.
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


def test_ray_job_submit_runs_finetune_on_the_cluster(head_node, tiny_model, demo_shards, tmp_path):
    storage = tmp_path / "runs"
    entry = [
        sys.executable, str(ROOT / "jobs" / "finetune.py"),
        "--set", f"model.path={tiny_model}", "--set", f"data.uri={demo_shards}",
        "--set", f"run.storage_path={storage}", "--set", "run.name=submitted",
        "--set", "model.lora_rank=4", "--set", "train.batch_size=4", "--set", "train.max_steps=4",
        "--set", "train.checkpoint_every=4", "--set", "train.log_every=2",
        "--set", "validation.every_steps=4", "--set", "validation.num_steps=2",
    ]  # fmt: skip
    # The dashboard answers before its job agent has registered; a submission then fails with
    # "No available agent" and nothing was started, so it is safe to submit again (bounded).
    for _ in range(20):
        done = subprocess.run(
            [str(RAY), "job", "submit", "--address", head_node["url"], "--", *entry],
            env=head_node["env"], capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if "No available agent" not in done.stdout + done.stderr:
            break
        time.sleep(3)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary_path = storage / "submitted" / "outputs" / "summary.json"
    assert str(summary_path) in done.stdout  # the job's last line, streamed back by `ray job submit`
    summary = json.loads(summary_path.read_text())
    assert summary["steps"] == 4
    exported = Path(summary["exported_model"])
    assert (exported / "lora").is_dir() and (exported / "unet").is_dir()
    assert json.loads((exported / "ambient_metadata.json").read_text())["lora_rank"] == 4
