"""promtool (Debian's prometheus package) accepts the Prometheus config, as committed and as rendered,
and parses every dashboard query offline. The other offline dashboard checks are in
tests/unit/test_dashboards.py."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.helpers.dashboards import BOARDS, DASHBOARDS, exprs, load, render_prometheus
from tests.helpers.services import require

pytestmark = pytest.mark.integration
PROMTOOL = shutil.which("promtool")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    require("promtool (Debian's prometheus package)", PROMTOOL is not None, "make system-deps")
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_config(tmp_path):
    result = _promtool("check", "config", "--syntax-only", str(DASHBOARDS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = (("ray", {}), ("ray-local", {"target": "127.0.0.1:8080"}), ("ray-local", {"interval": "5s"}))
    for i, (job, kwargs) in enumerate(rendered):
        path = tmp_path / f"{job}-{i}.yml"
        path.write_text(yaml.safe_dump(render_prometheus(job, **kwargs)))
        result = _promtool("check", "config", "--syntax-only", str(path))
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_every_query(tmp_path):
    """Each query, variables substituted, as a recording rule: promtool parses the PromQL offline."""
    rules = []
    for name in BOARDS:
        for i, expr in enumerate(exprs(load(name))):
            text = expr.replace("$__rate_interval", "1m").replace("$run", ".*").replace("$application", ".*")
            rules.append({"record": f"ambient:{name.split('.')[0]}:{i}", "expr": text})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
