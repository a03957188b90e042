"""The Grafana dashboards and the Prometheus config, checked offline.

tests/integration/test_observability.py runs every query against a real Prometheus, and
tests/integration/test_dashboards_promtool.py has promtool check the config and the queries; here: the
JSON is what dashboards/build_dashboards.py generates, is importable by Grafana (datasource variable,
panel types), names only metrics that exist and shows every platform metric, and the GPU panels read
Ray's own GPU gauges.
"""

from __future__ import annotations

import re

import pytest
import yaml

from ambient.metric_names import ALL_METRICS, SERVE_METRICS, TRAIN_METRICS
from tests.helpers.dashboards import (
    BOARDS,
    BUILDERS,
    DASHBOARDS,
    GPU_METRICS,
    ROOT,
    dashboard_queries,
    exprs,
    is_gpu_query,
    load,
    render_board,
    render_prometheus,
)


def test_committed_json_is_what_the_builder_generates():
    for name, build in BUILDERS.items():
        assert (DASHBOARDS / name).read_text() == render_board(build), (
            f"dashboards/{name} is stale: run .venv/bin/python dashboards/build_dashboards.py"
        )


@pytest.mark.parametrize("name", BOARDS)
def test_dashboard_is_importable_by_grafana(name):
    board = load(name)
    assert 36 <= board["schemaVersion"] <= 41 and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    ids, cells = set(), set()
    for p in board["panels"]:
        assert p["type"] in ("timeseries", "stat") and p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}" and p["id"] not in ids
        ids.add(p["id"])
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        cell = {(g["x"] + dx, g["y"] + dy) for dx in range(g["w"]) for dy in range(g["h"])}
        assert not cell & cells, f"panel {p['title']!r} overlaps another"
        cells |= cell
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}" and t["expr"].strip()
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
    # Every $variable a query uses is defined (or is one of Grafana's own).
    for expr in exprs(board):
        for var in re.findall(r"\$\{?(\w+)", expr):
            assert var.startswith("__") or var in variables, f"undefined ${var} in {expr}"


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(ray_[a-zA-Z0-9_]+)\b", expr))


def test_platform_metrics_named_exist_and_each_is_shown():
    exported = set()
    for spec in ALL_METRICS:
        base = spec.exported
        exported |= {base + s for s in ("_bucket", "_sum", "_count")} if spec.kind == "histogram" else {base}
    used = set().union(*(_metric_names(e) for name in BOARDS for e in exprs(load(name))))
    unknown = {n for n in used if n.startswith("ray_ambient_")} - exported
    assert not unknown, f"dashboards name metrics that metric_names.py does not define: {unknown}"
    train = {n for e in exprs(load("training.json")) for n in _metric_names(e)}
    serve = {n for e in exprs(load("serving.json")) for n in _metric_names(e)}
    for specs, names, board in ((TRAIN_METRICS, train, "training"), (SERVE_METRICS, serve, "serving")):
        for spec in specs:
            assert any(n.startswith(spec.exported) for n in names), (
                f"{spec.exported} not on the {board} board"
            )


def test_prometheus_config_scrapes_ray_discovery_file_and_local_port():
    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    assert jobs["ray-local"]["static_configs"][0]["targets"] == ["127.0.0.1:8080"]
    # cluster/local/start.sh's default --metrics-export-port is that static target.
    start = (ROOT / "cluster" / "local" / "start.sh").read_text()
    assert "RAY_METRICS_PORT=${RAY_METRICS_PORT:-8080}" in start

    local = render_prometheus("ray-local", target="127.0.0.1:9999", interval="5s")
    assert [j["job_name"] for j in local["scrape_configs"]] == ["ray-local"]
    assert local["scrape_configs"][0]["static_configs"] == [{"targets": ["127.0.0.1:9999"]}]
    # The timeout follows the interval: Prometheus would otherwise cut a slow scrape at min(10 s, interval).
    assert local["global"]["scrape_interval"] == local["global"]["scrape_timeout"] == "5s"
    with pytest.raises(ValueError):
        render_prometheus("ray", target="127.0.0.1:1")


def test_gpu_panels_query_ray_gpu_gauges():
    """On a CPU-only test machine these cannot return data; their names must be Ray's own GPU gauges."""
    from ray.dashboard.modules.reporter.reporter_agent import METRICS_GAUGES

    gpu = [
        e for name in ("training.json", "serving.json") for _, e in dashboard_queries(name) if is_gpu_query(e)
    ]
    assert gpu, "the training dashboard shows GPU utilization and memory"
    for name in GPU_METRICS:
        assert name.removeprefix("ray_") in METRICS_GAUGES, f"{name} is not a gauge of Ray's node reporter"
