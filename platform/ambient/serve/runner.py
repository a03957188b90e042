"""Run the service until interrupted: the body of jobs/serve.py.

Joins RAY_ADDRESS or starts a local cluster, starts Serve's HTTP proxy on the configured host and port
(unless Serve already runs there), deploys the app, waits until /v1/health answers, prints the base
URL, and on SIGINT/SIGTERM removes what it started (the app; Serve and Ray if it started them).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request

from ambient.ray_init import init_ray

from .app import build_application, running_serve_http_host
from .config import ServeConfig
from .model import choose_model

logger = logging.getLogger(__name__)


def base_url(cfg: ServeConfig) -> str:
    host = "127.0.0.1" if cfg.http.host in ("0.0.0.0", "::") else cfg.http.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{cfg.http.port}{cfg.route_prefix.rstrip('/')}"


def wait_healthy(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/v1/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the service did not become healthy at {url}/v1/health within {timeout_s:.0f}s"
            )
        time.sleep(0.5)


def run_service(cfg: ServeConfig, ready_timeout_s: float = 900.0) -> str:
    """Deploy, print the base URL once it answers, block until interrupted; returns the URL."""
    import ray
    from ray import serve

    def _stop(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    choice = _chosen_model(cfg)  # a missing or malformed model fails here, before Ray starts
    started_ray = not ray.is_initialized()
    init_ray(log_to_driver=False)  # the replicas log on their own; the driver prints only the URL
    # After ray.init, which installs its own SIGTERM handler; SIGINT too, in case a parent ignored it.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    started_serve = False
    try:
        print(f"model: {choice.label} ({choice.uri})", file=sys.stderr, flush=True)
        # A Serve already running here keeps its own HTTP host: the token rule applies to that one.
        running_host = running_serve_http_host()
        app = build_application(cfg, choice, serve_host=running_host)
        if running_host is not None:
            print("Serve already runs on this cluster: its HTTP host/port apply", file=sys.stderr)
        else:
            serve.start(
                http_options={"host": cfg.http.host, "port": cfg.http.port}, proxy_location="HeadOnly"
            )
            started_serve = True
        serve.run(app, name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False)
        url = base_url(cfg)
        wait_healthy(url, ready_timeout_s)
        _print_model(url, cfg)
        print(url, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        try:
            if started_serve:
                serve.shutdown()
            elif ray.is_initialized():
                serve.delete(cfg.app_name)
        finally:
            if started_ray:
                ray.shutdown()
    return base_url(cfg)


def _chosen_model(cfg: ServeConfig):
    try:
        return choose_model(cfg.model, cfg.storage.resolved())
    except (FileNotFoundError, ValueError) as err:
        message = str(err)
        raise type(err)(message if message.startswith("model") else f"model: {message}") from None


def _print_model(url: str, cfg: ServeConfig) -> None:
    """The startup log line saying what is served (the replica's own account of the loaded model)."""
    import json

    request = urllib.request.Request(f"{url}/v1/model")
    token = os.environ.get(cfg.auth.token_env or "", "")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            info = json.loads(resp.read())
        print(
            f"serving {info['source']}: sigma_n {info['sigma_n']}, default sampling "
            f"{info['default_sampling_mode']}, {info['resolution']} px",
            file=sys.stderr,
            flush=True,
        )
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        pass
