"""Every Prometheus metric the platform exports: the one source of truth for names and help texts.

Custom metrics are created with ``ray.util.metrics``; Ray's exporter adds the ``ray_`` prefix, so
``ambient_train_loss`` is scraped as ``ray_ambient_train_loss``. docs/metrics.md lists the same names
(a test keeps the two in step) and the dashboards query them.
"""

from __future__ import annotations

from dataclasses import dataclass

RAY_PREFIX = "ray_"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # "gauge" | "counter" | "histogram"
    help: str
    tags: tuple[str, ...] = ()

    @property
    def exported(self) -> str:
        """The name as Prometheus sees it (counters also get Prometheus' ``_total`` suffix)."""
        return RAY_PREFIX + self.name + ("_total" if self.kind == "counter" else "")


_TRAIN_TAGS = ("run", "rank")

TRAIN_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("ambient_train_loss", "gauge", "Total training loss of the last step", _TRAIN_TAGS),
    MetricSpec(
        "ambient_train_ambient_loss", "gauge", "Ambient (double-Tweedie) loss of the last step", _TRAIN_TAGS
    ),
    MetricSpec(
        "ambient_train_consistency_loss",
        "gauge",
        "Consistency loss of the last step where it ran (unweighted)",
        _TRAIN_TAGS,
    ),
    MetricSpec("ambient_train_lr", "gauge", "Learning rate", _TRAIN_TAGS),
    MetricSpec(
        "ambient_train_images_per_second", "gauge", "Training images per second on this worker", _TRAIN_TAGS
    ),
    MetricSpec("ambient_train_step_seconds", "gauge", "Wall time of the last optimizer step", _TRAIN_TAGS),
    MetricSpec("ambient_train_data_wait_seconds", "gauge", "Time the last step waited for data", _TRAIN_TAGS),
    MetricSpec(
        "ambient_train_checkpoint_seconds", "gauge", "Wall time of the last checkpoint save", _TRAIN_TAGS
    ),
    MetricSpec("ambient_train_step", "gauge", "Optimizer steps completed", _TRAIN_TAGS),
    MetricSpec("ambient_train_images", "counter", "Training images consumed", _TRAIN_TAGS),
)

_SERVE_TAGS = ("route",)

SERVE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "ambient_serve_requests",
        "counter",
        "HTTP requests answered, by route and status code",
        ("route", "status"),
    ),
    MetricSpec(
        "ambient_serve_request_seconds",
        "histogram",
        "End-to-end request latency inside the replica",
        _SERVE_TAGS,
    ),
    MetricSpec(
        "ambient_serve_queue_seconds", "histogram", "Time a generate request waited for its model call"
    ),
    MetricSpec("ambient_serve_model_seconds", "histogram", "Wall time of one model call (a batch)"),
    MetricSpec("ambient_serve_batch_images", "histogram", "Images per model call"),
    MetricSpec("ambient_serve_denoising_steps", "histogram", "Denoising steps per generate request"),
    MetricSpec("ambient_serve_images", "counter", "Images generated"),
    MetricSpec("ambient_serve_model_loaded", "gauge", "1 once the replica has loaded its model"),
)

ALL_METRICS: tuple[MetricSpec, ...] = TRAIN_METRICS + SERVE_METRICS
