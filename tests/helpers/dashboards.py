"""The committed Grafana dashboards (dashboards/*.json) as data: their queries, and which of them read
only Ray's GPU gauges. dashboards/ is a folder of scripts, not a package: it goes on ``sys.path``."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
BOARDS = ("training.json", "serving.json")
METRIC_NAME = re.compile(r"\b(ray_[a-zA-Z0-9_]+)\b")
if str(DASHBOARDS) not in sys.path:
    sys.path.insert(0, str(DASHBOARDS))

from build_dashboards import DASHBOARDS as BUILDERS  # noqa: E402  (the generator of each board)
from build_dashboards import GPU_METRICS  # noqa: E402
from build_dashboards import render as render_board  # noqa: E402
from prometheus_config import render as render_prometheus  # noqa: E402

__all__ = ["BOARDS", "BUILDERS", "DASHBOARDS", "GPU_METRICS", "ROOT", "render_board", "render_prometheus"]


def load(name: str) -> dict:
    return json.loads((DASHBOARDS / name).read_text())


def exprs(board: dict) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def dashboard_queries(name: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of one dashboard, unsubstituted."""
    board = load(name)
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


def is_gpu_query(expr: str) -> bool:
    names = set(METRIC_NAME.findall(expr))
    return bool(names) and names <= set(GPU_METRICS)
