"""Joining or starting the Ray cluster a job runs on: one rule for every job."""

from __future__ import annotations

import math
import os

import ray

from .logs import attach_worker_log_filter


def init_ray(
    address: str | None = None,
    min_cpus: float = 0,
    *,
    log_to_driver: bool = True,
    metrics_port: int | None = None,
) -> None:
    """Join ``address`` or RAY_ADDRESS (``ray job submit`` sets it); otherwise start a new local cluster.

    ``address="local"`` is explicit on purpose: a bare ``ray.init()`` silently joins whatever cluster a
    ``ray start`` left on this machine. Locally, logical CPUs exceed the cores so that train workers,
    trial drivers and Ray Data read tasks are all schedulable at once (the stream starves otherwise).
    ``metrics_port``: the new local cluster's Prometheus export port (Ray's default otherwise), so that
    a scraper finds this cluster and no other; a joined cluster keeps its own.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        port = {} if metrics_port is None else {"_metrics_export_port": metrics_port}
        ray.init(
            address="local",
            num_cpus=max(os.cpu_count() or 1, 2 * math.ceil(min_cpus) + 4),
            include_dashboard=False,
            log_to_driver=log_to_driver,
            **port,
        )
    attach_worker_log_filter()  # known-harmless worker lines hidden unless --verbose (ambient.logs)
