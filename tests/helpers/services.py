"""Plain helpers for tests that need real components: skip-or-fail on a missing one, free loopback
ports, polling a service, importing a script (not a package) as a module, the Ray node's metrics port.

- ``require(what, available, how)``: a test needing a missing component fails under CI=true and
  skips elsewhere with a message that says how to install it.
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
