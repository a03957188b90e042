"""Render dashboards/prometheus.yml for one way of running: keep one job, point it at a port or file.

    python dashboards/prometheus_config.py --job ray-local --target 127.0.0.1:8080 --out prom.yml
    python dashboards/prometheus_config.py --job ray --sd-file /tmp/ray/prom_metrics_service_discovery.json

cluster/local/start.sh and tests/integration/test_observability.py both use it, so that what they run
is the shipped configuration with only the address (and, in the test, the interval) changed.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml

SHIPPED = Path(__file__).resolve().parent / "prometheus.yml"


def render(
    job: str,
    target: str | None = None,
    sd_file: str | None = None,
    interval: str | None = None,
    source: Path = SHIPPED,
) -> dict:
    """The shipped config reduced to ``job``, with its static target or discovery file replaced."""
    config = yaml.safe_load(source.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    if job not in jobs:
        raise ValueError(f"no job {job!r} in {source} (has {', '.join(jobs)})")
    chosen = copy.deepcopy(jobs[job])
    if target is not None:
        if "static_configs" not in chosen:
            raise ValueError(f"job {job!r} has no static target to replace")
        chosen["static_configs"] = [{"targets": [target]}]
    if sd_file is not None:
        if "file_sd_configs" not in chosen:
            raise ValueError(f"job {job!r} has no service-discovery file to replace")
        chosen["file_sd_configs"] = [{"files": [sd_file]}]
    if interval is not None:
        # A scrape may take the whole interval: on a busy node Ray's metrics agent answers slowly, and
        # Prometheus' default timeout (10 s, cut to the interval when shorter) drops every late scrape.
        config["global"]["scrape_interval"] = interval
        config["global"]["scrape_timeout"] = interval
        config["global"]["evaluation_interval"] = interval
    config["scrape_configs"] = [chosen]
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, choices=["ray", "ray-local"])
    parser.add_argument("--target", help="host:port for ray-local (a --metrics-export-port)")
    parser.add_argument("--sd-file", help="Ray's service-discovery file for the ray job")
    parser.add_argument("--interval", help="scrape interval and timeout, e.g. 5s")
    parser.add_argument("--out", help="write here instead of stdout")
    args = parser.parse_args()
    text = yaml.safe_dump(render(args.job, args.target, args.sd_file, args.interval), sort_keys=False)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
