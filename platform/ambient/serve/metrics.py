"""The service's own Prometheus metrics (names in ambient.metric_names), exported by Ray's metrics agent."""

from __future__ import annotations

from ray.util import metrics as ray_metrics

from ambient.metric_names import SERVE_METRICS

# Histogram buckets by metric: seconds for latencies, counts for batch sizes and steps.
_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
_BOUNDARIES = {
    "ambient_serve_request_seconds": _SECONDS,
    "ambient_serve_queue_seconds": _SECONDS,
    "ambient_serve_model_seconds": _SECONDS,
    "ambient_serve_batch_images": [1, 2, 4, 8, 16, 32, 64],
    "ambient_serve_denoising_steps": [1, 2, 5, 10, 20, 30, 50, 100, 200],
}
# Only these routes get their own label value: a scanner's random paths must not create new series.
KNOWN_ROUTES = frozenset({"/v1/generate", "/v1/health", "/v1/model", "/docs", "/openapi.json"})


class ServeMetrics:
    def __init__(self) -> None:
        self._m: dict[str, ray_metrics.Metric] = {}
        for spec in SERVE_METRICS:
            if spec.kind == "counter":
                metric = ray_metrics.Counter(spec.name, description=spec.help, tag_keys=spec.tags)
            elif spec.kind == "gauge":
                metric = ray_metrics.Gauge(spec.name, description=spec.help, tag_keys=spec.tags)
            else:
                metric = ray_metrics.Histogram(
                    spec.name, description=spec.help, boundaries=_BOUNDARIES[spec.name], tag_keys=spec.tags
                )
            self._m[spec.name] = metric

    def request(self, path: str, status: int, seconds: float) -> None:
        route = path if path in KNOWN_ROUTES else "other"
        self._m["ambient_serve_requests"].inc(1, tags={"route": route, "status": str(status)})
        self._m["ambient_serve_request_seconds"].observe(seconds, tags={"route": route})

    def generated(self, images: int, steps: int, queue_seconds: float) -> None:
        self._m["ambient_serve_images"].inc(images)
        self._m["ambient_serve_denoising_steps"].observe(steps)
        self._m["ambient_serve_queue_seconds"].observe(queue_seconds)

    def model_call(self, images: int, seconds: float) -> None:
        self._m["ambient_serve_batch_images"].observe(images)
        self._m["ambient_serve_model_seconds"].observe(seconds)

    def loaded(self, value: bool) -> None:
        self._m["ambient_serve_model_loaded"].set(1.0 if value else 0.0)
