"""Per-step training metrics exported to Prometheus through Ray's metrics agent."""

from __future__ import annotations

from ray.util import metrics as ray_metrics

from ambient.metric_names import TRAIN_METRICS

from .records import StepRecord, check_metric_specs, metric_values


class TrainMetrics:
    """Gauges and counters named in ambient.metric_names, tagged with the run name and worker rank."""

    def __init__(self, run: str, rank: int) -> None:
        check_metric_specs(TRAIN_METRICS)  # a StepRecord field without its metric fails here, not silently
        self._tags = {"run": run, "rank": str(rank)}
        self._metrics = {}
        for spec in TRAIN_METRICS:
            cls = ray_metrics.Counter if spec.kind == "counter" else ray_metrics.Gauge
            metric = cls(spec.name, description=spec.help, tag_keys=spec.tags)
            metric.set_default_tags(self._tags)
            self._metrics[spec.name] = metric

    def record(self, record: StepRecord) -> None:
        """Set each gauge to the record's field of its name; add the counters' fields."""
        for name, value in metric_values(record).items():
            metric = self._metrics[name]
            if isinstance(metric, ray_metrics.Counter):
                if value:
                    metric.inc(value)
            else:
                metric.set(value)
