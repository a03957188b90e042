"""cluster/local's process identity: a readiness probe accepts only a listener of the session start.sh
started, and stop.sh signals only the process its PID file names (same PID and start time), never a
stranger that has the PID now."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.services import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
OWNER = ROOT / "cluster" / "local" / "owner.py"


def owner(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(OWNER), *map(str, args)], capture_output=True, text=True)


def listening_session(port: int) -> subprocess.Popen:
    """An HTTP server on 127.0.0.1:port in a session of its own, as start.sh's launch makes one."""
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    return subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def test_listens_is_true_only_for_the_session_that_holds_the_port():
    port = free_port()
    server = listening_session(port)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        wait_until(lambda: owner("listens", server.pid, port).returncode == 0, 20, "the server's listener")
        assert owner("listens", other.pid, port).returncode == 1  # another session: not the listener
        assert owner("listens", server.pid, free_port()).returncode == 1  # a port nobody listens on
    finally:
        for proc in (server, other):
            proc.kill()
            proc.wait()


def detached_sleeper() -> int:
    """A process in its own session whose parent has exited (as start.sh's services once it returns),
    so that its exit is reaped by init rather than left a zombie of this test."""
    done = subprocess.run(
        ["bash", "-c", "setsid sleep 120 >/dev/null 2>&1 </dev/null & echo $!"],
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def alive(pid: int) -> bool:
    """The sleeper (its own group leader) runs; an exited one left unreaped (a zombie) does not count."""
    return owner("group", pid).returncode == 0


def test_stop_signals_only_the_process_its_pid_file_names(tmp_path):
    state = tmp_path / "state"
    (state / "pids").mkdir(parents=True)
    stranger, ours = detached_sleeper(), detached_sleeper()
    try:
        start = int(owner("stamp", stranger).stdout.split()[1])
        # A PID file left by a run that is gone, whose PID now belongs to the stranger (start time differs).
        (state / "pids" / "s3.pid").write_text(f"{stranger} {start - 1}\n")
        (state / "pids" / "prometheus.pid").write_text(owner("stamp", ours).stdout)
        env = {**os.environ, "AMBIENT_LOCAL_STATE": str(state), "PYTHON": sys.executable, "STOP_TIMEOUT": "5"}
        done = subprocess.run(
            [str(ROOT / "cluster" / "local" / "stop.sh")], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"PID {stranger}" in done.stderr and "not signalled" in done.stderr
        assert alive(stranger), "stop.sh signalled a process start.sh did not start"
        assert f"stopped prometheus (PID {ours})" in done.stdout and not alive(ours)
        assert not list((state / "pids").iterdir())
    finally:
        for pid in (stranger, ours):
            if alive(pid):
                os.kill(pid, 9)
