"""Generate the Grafana dashboards (training.json, serving.json) from the panel lists below.

    .venv/bin/python dashboards/build_dashboards.py          # rewrite the JSON files
    .venv/bin/python dashboards/build_dashboards.py --check  # exit 1 if the committed JSON is out of date

The platform's own metric names come from ``ambient.metric_names`` (the single source of truth), so a
renamed metric changes the queries here; Ray's built-in names (``ray_node_*``, ``ray_serve_*``) were
read off a running Ray 2.60 cluster's metrics endpoint. tests/integration/test_observability.py runs
every query against a real Prometheus scraping a real training run and Serve deployment.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ambient.metric_names import SERVE_METRICS, TRAIN_METRICS

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# Prometheus' names of the platform's metrics, keyed by the short name (``ambient_train_loss`` -> ...).
M = {spec.name: spec.exported for spec in TRAIN_METRICS + SERVE_METRICS}
RATE = "$__rate_interval"  # Grafana picks a window of at least four scrape intervals

# Ray exports GPU gauges only from nodes that have GPUs; the observability test knows these names.
GPU_METRICS = ("ray_node_gpus_utilization", "ray_node_gram_used", "ray_node_gram_available")


def target(expr: str, legend: str = "", ref: str = "A") -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref, "range": True}


def panel(kind: str, title: str, exprs: list[tuple[str, str]], unit: str, desc: str = "", **opts) -> dict:
    """One panel; ``exprs`` is a list of (PromQL, legend). Grid positions are filled in by ``layout``."""
    p = {
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit, **opts.pop("defaults", {})}, "overrides": []},
        "targets": [target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(exprs)],
    }
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    else:
        p["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi"},
        }
    p.update(opts)
    return p


def layout(panels: list[dict]) -> list[dict]:
    """Flow left to right: stats as small tiles (four a row), time series two a row."""
    x = y = row_h = 0
    for i, p in enumerate(panels):
        w, h = (6, 4) if p["type"] == "stat" else (12, 8)
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p["id"] = i + 1
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x, row_h = x + w, max(row_h, h)
    return panels


def datasource_var() -> dict:
    return {
        "name": "DS_PROMETHEUS",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
    }


def query_var(name: str, label: str, query: str) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,  # on time range change: new runs and apps appear without reloading
        "sort": 1,
        "hide": 0,
    }


def dashboard(uid: str, title: str, tags: list[str], variables: list[dict], panels: list[dict]) -> dict:
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "uid": uid,
        "title": title,
        "tags": tags,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "templating": {"list": [datasource_var(), *variables]},
        "annotations": {"list": []},
        "links": [],
        "panels": layout(panels),
    }


def training() -> dict:
    sel = '{run=~"$run"}'
    loss, amb, cons = (
        M["ambient_train_loss"],
        M["ambient_train_ambient_loss"],
        M["ambient_train_consistency_loss"],
    )
    ips, step_s = M["ambient_train_images_per_second"], M["ambient_train_step_seconds"]
    wait, ckpt, step = (
        M["ambient_train_data_wait_seconds"],
        M["ambient_train_checkpoint_seconds"],
        M["ambient_train_step"],
    )
    images, lr = M["ambient_train_images"], M["ambient_train_lr"]
    panels = [
        panel("stat", "Step", [(f"max by (run) ({step}{sel})", "{{run}}")], "none"),
        panel("stat", "Workers", [(f"count by (run) ({step}{sel})", "{{run}}")], "none",
              "Train workers reporting (one series per rank)"),
        panel("stat", "Images/s (all workers)", [(f"sum by (run) ({ips}{sel})", "{{run}}")], "none"),
        panel("stat", "Images consumed", [(f"sum by (run) ({images}{sel})", "{{run}}")], "none"),
        panel("timeseries", "Loss: ambient and consistency", [
            (f"avg by (run) ({amb}{sel})", "ambient {{run}}"),
            (f"avg by (run) ({cons}{sel})", "consistency {{run}}"),
            (f"avg by (run) ({loss}{sel})", "total {{run}}"),
        ], "none", "Mean over ranks of each worker's last-step loss; consistency is unweighted"),
        panel("timeseries", "Images/s per worker and total", [
            (f"{ips}{sel}", "{{run}} rank {{rank}}"),
            (f"sum by (run) (rate({images}{sel}[{RATE}]))", "total {{run}} (from the counter)"),
        ], "none"),
        panel("timeseries", "Step time", [(f"{step_s}{sel}", "{{run}} rank {{rank}}")], "s"),
        panel("timeseries", "Data wait fraction", [
            (f"clamp_max({wait}{sel} / {step_s}{sel}, 1)", "{{run}} rank {{rank}}"),
        ], "percentunit", "Share of the step spent waiting for the batch; near 1 = input-bound"),
        panel("timeseries", "Checkpoint time", [(f"max by (run) ({ckpt}{sel})", "{{run}}")], "s",
              "Wall time of the last checkpoint save (slowest rank)"),
        panel("timeseries", "Learning rate", [(f"max by (run) ({lr}{sel})", "{{run}}")], "none"),
        panel("timeseries", "Node CPU", [("ray_node_cpu_utilization", "{{ip}}")], "percent",
              "Ray's node metrics (every node of the cluster)"),
        panel("timeseries", "Node memory", [
            ("ray_node_mem_used", "used {{ip}}"),
            ("ray_node_mem_total", "total {{ip}}"),
        ], "bytes"),
        panel("timeseries", "Ray worker memory (RSS)", [
            ("sum by (ip, Component) (ray_component_rss_mb * 1024 * 1024)", "{{ip}} {{Component}}"),
        ], "bytes", "Resident memory of Ray's processes by component (train workers are ray::RayTrainWorker)"),
        panel("timeseries", "GPU utilization", [("ray_node_gpus_utilization", "{{ip}} GPU {{GpuIndex}}")],
              "percent", "Exported only by nodes with GPUs"),
        panel("timeseries", "GPU memory", [
            ("ray_node_gram_used * 1024 * 1024", "used {{ip}} GPU {{GpuIndex}}"),
            ("(ray_node_gram_used + ray_node_gram_available) * 1024 * 1024", "total {{ip}} GPU {{GpuIndex}}"),
        ], "bytes", "Ray reports GPU memory in MiB; exported only by nodes with GPUs"),
    ]  # fmt: skip
    run_var = query_var("run", "Run", f"label_values({step}, run)")
    return dashboard("ambient-training", "Ambient: fine-tuning", ["ambient", "ray"], [run_var], panels)


def serving() -> dict:
    app = '{application=~"$application"}'
    req, lat = M["ambient_serve_requests"], M["ambient_serve_request_seconds"]
    queue, model = M["ambient_serve_queue_seconds"], M["ambient_serve_model_seconds"]
    batch, steps = M["ambient_serve_batch_images"], M["ambient_serve_denoising_steps"]
    images, loaded = M["ambient_serve_images"], M["ambient_serve_model_loaded"]
    gen = '{route="/v1/generate"}'

    def q(p: float, hist: str, by: str = "le", sel: str = "") -> str:
        return f"histogram_quantile({p}, sum by ({by}) (rate({hist}_bucket{sel}[{RATE}])))"

    panels = [
        panel("stat", "Requests/s", [(f"sum(rate({req}[{RATE}]))", "requests/s")], "reqps"),
        panel("stat", "Error rate (5xx)", [
            # 1 - ok/all is 0 (not "no data") while there are requests and no errors.
            (f'1 - sum(rate({req}{{status!~"5.."}}[{RATE}])) / sum(rate({req}[{RATE}]))', "5xx"),
        ], "percentunit"),
        panel("stat", "Healthy replicas", [
            (f"sum by (application, deployment) (ray_serve_deployment_replica_healthy{app})",
             "{{application}}/{{deployment}}"),
        ], "none"),
        panel("stat", "Model loaded (replicas)", [(f"sum({loaded})", "loaded")], "none"),
        panel("timeseries", "Requests/s by status", [
            (f"sum by (route, status) (rate({req}[{RATE}]))", "{{route}} {{status}}"),
            (f"sum by (application, status_code) (rate(ray_serve_num_http_requests_total{app}[{RATE}]))",
             "proxy {{application}} {{status_code}}"),
        ], "reqps", "The service's own counter by route and status, and Ray Serve's HTTP proxy counter"),
        panel("timeseries", "Error rate", [
            (f'1 - sum(rate({req}{{status!~"5.."}}[{RATE}])) / sum(rate({req}[{RATE}]))', "5xx"),
            (f'1 - sum(rate({req}{{status!~"4.."}}[{RATE}])) / sum(rate({req}[{RATE}]))', "4xx"),
        ], "percentunit", "Share of answered requests with a 5xx / 4xx status"),
        panel("timeseries", "Generate latency", [
            (q(0.5, lat, sel=gen), "p50"), (q(0.95, lat, sel=gen), "p95"), (q(0.99, lat, sel=gen), "p99"),
        ], "s", "End-to-end /v1/generate latency inside the replica (queue + model + PNG)"),
        panel("timeseries", "Proxy latency (all routes)", [
            (q(0.5, "ray_serve_http_request_latency_ms", sel=app), "p50"),
            (q(0.95, "ray_serve_http_request_latency_ms", sel=app), "p95"),
            (q(0.99, "ray_serve_http_request_latency_ms", sel=app), "p99"),
        ], "ms", "Ray Serve's HTTP proxy, as a client sees it"),
        panel("timeseries", "Queue wait and model call", [
            (q(0.95, queue), "queue p95"), (q(0.5, queue), "queue p50"),
            (q(0.95, model), "model call p95"), (q(0.5, model), "model call p50"),
        ], "s", "Queue = wait for the batched model call; model call = one batch"),
        panel("timeseries", "Batch size", [
            (f"sum(rate({batch}_sum[{RATE}])) / sum(rate({batch}_count[{RATE}]))", "mean images per call"),
            (q(0.95, batch), "p95"),
        ], "none"),
        panel("timeseries", "Replicas", [
            (f"sum by (deployment) (ray_serve_deployment_replica_healthy{app})", "healthy {{deployment}}"),
            (f"sum by (deployment) (ray_serve_autoscaling_target_replicas{app})", "target {{deployment}}"),
        ], "none"),
        panel("timeseries", "Queue length", [
            (f"sum by (deployment) (ray_serve_deployment_queued_queries{app})", "queued at handles {{deployment}}"),
            (f"sum by (deployment) (ray_serve_replica_processing_queries{app})", "processing {{deployment}}"),
            ("sum(ray_serve_num_ongoing_http_requests)", "ongoing at proxies"),
        ], "none", "Requests waiting for a replica, and requests inside replicas"),
        panel("timeseries", "Images/s", [(f"sum(rate({images}[{RATE}]))", "images/s")], "none"),
        panel("timeseries", "Denoising steps per request", [
            (f"sum(rate({steps}_sum[{RATE}])) / sum(rate({steps}_count[{RATE}]))", "mean"),
        ], "none"),
    ]  # fmt: skip
    app_var = query_var(
        "application", "Application", "label_values(ray_serve_deployment_replica_healthy, application)"
    )
    return dashboard("ambient-serving", "Ambient: serving", ["ambient", "ray", "serve"], [app_var], panels)


DASHBOARDS = {"training.json": training, "serving.json": serving}


def render(build) -> str:
    return json.dumps(build(), indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed file is out of date")
    args = parser.parse_args()
    stale = []
    for name, build in DASHBOARDS.items():
        text, path = render(build), HERE / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(path)
    if stale:
        print(f"out of date: {', '.join(stale)} (run dashboards/build_dashboards.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
