"""docs/metrics.md and ambient.metric_names name exactly the same metrics."""

import re
from pathlib import Path

from ambient.metric_names import ALL_METRICS

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def test_every_exported_metric_is_documented_and_nothing_else():
    documented = set(re.findall(r"`(ray_ambient_[a-z_]+)`", DOC.read_text()))
    exported = {m.exported for m in ALL_METRICS}
    assert documented == exported, (
        f"only in docs: {documented - exported}; undocumented: {exported - documented}"
    )


def test_metric_names_are_unique_and_prometheus_safe():
    names = [m.name for m in ALL_METRICS]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", n) for n in names)
    assert all(m.kind in ("gauge", "counter", "histogram") for m in ALL_METRICS)
