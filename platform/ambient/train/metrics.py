"""Per-step training metrics exported to Prometheus through Ray's metrics agent."""

from __future__ import annotations

from ray.util import metrics as ray_metrics

from ambient.metric_names import TRAIN_METRICS


class TrainMetrics:
    """Gauges and counters named in ambient.metric_names, tagged with the run name and worker rank."""

    def __init__(self, run: str, rank: int) -> None:
        self._tags = {"run": run, "rank": str(rank)}
        self._metrics = {}
        for spec in TRAIN_METRICS:
            cls = ray_metrics.Counter if spec.kind == "counter" else ray_metrics.Gauge
            metric = cls(spec.name, description=spec.help, tag_keys=spec.tags)
            metric.set_default_tags(self._tags)
            self._metrics[spec.name] = metric

    def record(self, values: dict[str, float], images: int = 0) -> None:
        """Set each gauge named in ``values`` (keys without the ``ambient_train_`` prefix)."""
        for key, value in values.items():
            metric = self._metrics.get(f"ambient_train_{key}")
            if metric is not None and not isinstance(metric, ray_metrics.Counter):
                metric.set(float(value))
        if images:
            self._metrics["ambient_train_images"].inc(images)
