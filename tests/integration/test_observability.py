"""Every dashboard query returns data from a real Prometheus scraping a real training run and Serve app.

A Prometheus (Debian's /usr/bin/prometheus) scrapes the session Ray cluster's metrics port every 10 s,
with dashboards/prometheus.yml's `ray-local` job pointed at that port. While a short 2-worker fine-tune
runs, a Serve deployment of the tiny model answers bounded traffic on loopback; a poller evaluates each
query of dashboards/training.json and serving.json through /api/v1/query (dashboard variables
substituted) and marks it answered once it returns a series. Queries still empty when the run ends are
evaluated over the whole test window with /api/v1/query_range (a finished worker's gauges may leave the
exporter). A query naming a metric that nothing exports never answers and fails the test.

Why 10 s (the shipped interval) and not 1 s: the series Ray's metrics agent exports grow through a test
session (2,000 at its start, 4,100 fourteen minutes in), and on a busy 2-core machine a scrape is slow:
beside another fine-tune a scrape of 3,100 series takes 0.8-1.1 s on average and up to 6.7 s. Prometheus cuts a scrape at its interval, here 10 s. At 1 s, a full CI run (47
minutes in) saw every training counter but no training gauge: counters persist into the scrapes after the
run, while Ray's agent drops a gauge 20 s after its last report, so scrapes failing only while training
fit exactly that (inferred: that run recorded no scrape timings). A failure message now carries
Prometheus' own record of its scrapes (up, duration, samples), to tell.

Ray exports GPU gauges only from nodes with GPUs: on a CPU-only cluster the GPU panels' queries are
checked statically instead (their names must be gauges of Ray's own node reporter).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.helpers.dashboards import dashboard_queries, is_gpu_query
from tests.helpers.services import free_port, ray_metrics_port, require, wait_until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
sys.path.insert(0, str(DASHBOARDS))
from prometheus_config import render  # noqa: E402

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
RUN_NAME = "observability"
APP_NAME = "ambient-observability"
SCRAPE_INTERVAL = "10s"  # also the scrape timeout, as shipped (see the module docstring)
RATE_INTERVAL = "40s"  # Grafana's $__rate_interval at a 10 s scrape interval: 4 x the interval


# ---- the dashboards' queries ------------------------------------------------------------------------


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables ($name, ${name}, $__rate_interval) as Grafana would for one selection."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__interval", "2s")

    def one(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no test value for dashboard variable ${name} in {expr}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


# ---- Prometheus -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(ray_session, tmp_path_factory):
    """A real Prometheus scraping the tests' Ray node every 10 s; stopped by its PID."""
    require("Prometheus (/usr/bin/prometheus)", os.access(PROMETHEUS, os.X_OK), "make system-deps")
    tmp = tmp_path_factory.mktemp("prometheus")
    config = render("ray-local", target=f"127.0.0.1:{ray_metrics_port()}", interval=SCRAPE_INTERVAL)
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 (open for the server's lifetime)
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: requests.get(f"{url}/-/ready", timeout=2).status_code == 200, 60, "Prometheus ready"
        )
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def instant(url: str, expr: str) -> list:
    r = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    assert r.status_code == 200, f"{expr}: {r.text}"  # a syntax error is a 400: fail at once
    return r.json()["data"]["result"]


def over_range(url: str, expr: str, start: float, end: float) -> list:
    params = {"query": expr, "start": start, "end": end, "step": "2s"}
    r = requests.get(f"{url}/api/v1/query_range", params=params, timeout=30)
    assert r.status_code == 200, f"{expr}: {r.text}"
    return r.json()["data"]["result"]


def scrape_health(url: str, start: float) -> str:
    """Prometheus' record of its own scrapes of Ray since ``start``: how many failed, how slow, how big."""
    window = f"{int(time.time() - start) + 1}s"

    def series(expr: str) -> list[float]:
        """Every raw sample in the window (a range selector, so no step interpolation)."""
        return [float(v) for r in instant(url, f"{expr}[{window}]") for _, v in r["values"]]

    up = series('up{job="ray-local"}')
    seconds = series('scrape_duration_seconds{job="ray-local"}')
    samples = series('scrape_samples_scraped{job="ray-local"}')
    if not up:
        return "no scrape recorded"
    return (
        f"{len(up)} scrapes every {SCRAPE_INTERVAL}, {up.count(0.0)} failed; scrape time max"
        f" {max(seconds):.2f} s, mean {sum(seconds) / len(seconds):.2f} s; samples max {max(samples):.0f}"
    )


def label_values(url: str, metric: str, label: str, start: float) -> list[str]:
    params = {"match[]": metric, "start": start, "end": time.time()}
    return requests.get(f"{url}/api/v1/label/{label}/values", params=params, timeout=10).json()["data"]


class Poller(threading.Thread):
    """Evaluates the pending queries again and again; a query is answered once it returns a series."""

    def __init__(self, url: str, queries: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.pending, self.answered = url, dict(queries), {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.error: BaseException | None = None

    def unanswered(self) -> set[str]:
        with self.lock:
            return set(self.pending)

    def sweep(self) -> None:
        for key, expr in list(self.pending.items()):
            if instant(self.url, expr):
                with self.lock:
                    self.answered[key] = "instant"
                    del self.pending[key]

    def run(self) -> None:
        try:
            while self.pending and not self.stop.wait(2.0):
                self.sweep()
        except BaseException as exc:  # reported by the test
            self.error = exc


# ---- load: a Serve deployment under bounded traffic, and a short fine-tune ---------------------------


@pytest.fixture(scope="module")
def service(ray_session, tiny_model):
    from ray import serve

    from ambient.serve.app import build_application, load_serve_config

    port = free_port()
    cfg = load_serve_config(
        inline={
            "model": tiny_model,
            "http": {"port": port},
            "limits": {"max_images_per_request": 2, "max_pixels": 64 * 64, "max_steps": 4},
            "defaults": {"steps": 2, "method": "euler"},
            "batching": {"max_batch_images": 4, "batch_wait_timeout_s": 0.05},
            "replica": {"num_cpus": 1, "torch_threads": 1},
        }
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    try:
        serve.run(build_application(cfg), name=APP_NAME, route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(f"{url}/v1/health", timeout=5).status_code == 200, 300, "service")
        yield url
    finally:
        serve.shutdown()


def traffic(url: str, stop: threading.Event, max_requests: int = 400) -> None:
    """Loopback only, bounded: small generate calls (a few of them invalid: 422) and health checks."""
    with requests.Session() as s:
        for i in range(max_requests):
            if stop.is_set():
                return
            try:
                if i % 5 == 4:
                    s.post(f"{url}/v1/generate", json={"prompt": "x", "steps": 99}, timeout=30)  # 422
                elif i % 5 == 3:
                    s.get(f"{url}/v1/health", timeout=30)
                else:
                    body = {
                        "prompt": "a red circle",
                        "steps": 2,
                        "height": 32,
                        "width": 32,
                        "num_images": 1 + i % 2,
                    }
                    s.post(f"{url}/v1/generate", json=body, timeout=60)
            except requests.RequestException:
                pass
            stop.wait(1.0)  # a trickle: the dashboards need rates, not load; the cores are for training


def finetune_config(tiny_model: str, shards: str, storage: Path):
    from ambient.config import load_config
    from ambient.train import FinetuneConfig

    overrides = {
        "model.path": tiny_model,
        "data.uri": shards,
        "data.prepare_if_missing": False,
        "run.name": RUN_NAME,
        "run.storage_path": str(storage),
        "scaling.num_workers": 2,
        "train.batch_size": 4,
        "train.max_steps": 8,
        "train.checkpoint_every": 4,  # checkpoints early and often: the checkpoint-time gauge must export
        "train.log_every": 2,
        "validation.every_steps": 8,
        "validation.num_steps": 2,
        "validation.prompts": "[a red circle on a blue background]",
        "showcase.enabled": False,  # the demo's before/after picture: minutes of sampling, no metrics
    }
    demo = ROOT / "jobs" / "configs" / "finetune_demo.yaml"
    return load_config(FinetuneConfig, demo, [f"{k}={v}" for k, v in overrides.items()])


# ---- the tests --------------------------------------------------------------------------------------


def test_every_dashboard_query_returns_data(
    prometheus, service, tiny_model, demo_shards, tmp_path, ray_session
):
    from ambient.train import run_finetune

    start = time.time() - 5
    has_gpu = ray_session.cluster_resources().get("GPU", 0) > 0
    values = {"run": RUN_NAME, "application": APP_NAME}
    queries, skipped = {}, []
    for board in ("training.json", "serving.json"):
        for title, expr in dashboard_queries(board):
            if is_gpu_query(expr) and not has_gpu:
                skipped.append(f"{board}: {title}")
                continue
            queries[f"{board} / {title}: {expr}"] = substitute(expr, values)
    # A negative control: a name nothing exports must stay unanswered, or the check proves nothing.
    canary = f"canary: sum(rate(ray_ambient_no_such_metric_total[{RATE_INTERVAL}]))"
    queries[canary] = canary.split(": ", 1)[1]

    stop = threading.Event()
    load = threading.Thread(target=traffic, args=(service, stop), daemon=True)
    poller = Poller(prometheus, queries)
    load.start()
    poller.start()
    try:
        summary = run_finetune(finetune_config(tiny_model, demo_shards, tmp_path / "ray"))
        assert Path(summary).is_file()
    finally:
        stop.set()
        poller.stop.set()
        load.join(timeout=90)
        poller.join(timeout=60)
    assert poller.error is None, f"the poller failed: {poller.error!r}"

    # Gauges of finished train workers may have left the exporter: look over the whole window. Ray's
    # metrics agent exports with a delay of several seconds, so the last values may still be arriving.
    deadline = time.monotonic() + 60
    while set(poller.pending) - {canary} and time.monotonic() < deadline:
        for key in list(poller.pending):
            if key != canary and over_range(prometheus, poller.pending[key], start, time.time()):
                poller.answered[key] = "range"
                del poller.pending[key]
        time.sleep(2)
    if over_range(prometheus, poller.pending[canary], start, time.time()):
        poller.answered[canary] = "range"
        del poller.pending[canary]
    assert poller.pending.pop(canary, None), "a query of a metric nothing exports returned data"
    modes = [poller.answered[k] for k in poller.answered]
    print(
        f"\n{modes.count('instant')} queries answered while running, {modes.count('range')} over the window;"
        f" GPU panels not evaluated (no GPU): {skipped}"
    )
    health = scrape_health(prometheus, start)
    print(f"Prometheus scrapes of Ray: {health}")
    assert not poller.pending, (
        "dashboard queries that returned no series:\n" + "\n".join(poller.pending) + f"\nscrapes: {health}"
    )

    # Each dashboard variable's own query (label_values(metric, label)) offers what ran.
    for board in ("training.json", "serving.json"):
        for var in json.loads((DASHBOARDS / board).read_text())["templating"]["list"]:
            if var["type"] == "query":
                metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["definition"]).groups()
                assert values[var["name"]] in label_values(prometheus, metric, label, start), var["name"]
