"""The replica's work without Ray Serve's wrapping: the model, its worker thread, batching and health.

``deployment.Sampler`` is this class as a Serve deployment; tests build it directly and serve
``http.create_app`` over it with any ASGI server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from pydantic import SecretStr

from .auth import BearerAuth
from .batcher import KeyedBatcher
from .config import ServeConfig
from .metrics import ServeMetrics
from .model import Job, JobResult, LoadedModel, ModelChoice, load_model, run_jobs

logger = logging.getLogger("ray.serve")  # Serve routes this logger to the replica's log file


class SamplerService:
    def __init__(
        self,
        config: ServeConfig,
        choice: ModelChoice,
        token: SecretStr | None = None,
        replica_id: str = "local",
    ) -> None:
        self.config = config
        self.metrics = ServeMetrics()
        self.metrics.loaded(False)
        self.auth = BearerAuth(config.auth.token_env, token)
        self.replica_id = replica_id
        self.model: LoadedModel | None = None
        rep = config.replica
        threads = rep.torch_threads or max(1, int(rep.num_cpus))
        torch.set_num_threads(threads)
        # torch's intra-op thread count is per thread: set it in the worker thread too.
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix="model", initializer=torch.set_num_threads, initargs=(threads,)
        )
        device = torch.device("cuda" if rep.num_gpus > 0 and torch.cuda.is_available() else "cpu")
        self.model = load_model(choice, config.storage, getattr(torch, rep.dtype), device)
        self.metrics.loaded(True)
        b = config.batching
        self._call_rows = b.resolved_call_rows(on_gpu=device.type == "cuda") if b.fixed_shape else None
        self.batcher = KeyedBatcher(
            self._run_batch,
            max_weight=b.max_batch_images,
            wait_s=b.batch_wait_timeout_s if b.enabled else 0.0,
            max_defer_s=b.max_defer_s,
        )
        logger.info(
            "replica %s serving %s (sigma_n %.4g, default sampling %s, %d px, %s, auth %s)",
            self.replica_id,
            choice.label,
            self.model.sigma_n,
            self.model.default_mode,
            self.model.resolution,
            device,
            "on" if self.auth.enabled else "off",
        )

    async def submit(self, job: Job) -> JobResult:
        return await self.batcher.submit(job)

    async def _run_batch(self, jobs: list[Job]) -> list[JobResult]:
        loop = asyncio.get_running_loop()
        results, calls = await loop.run_in_executor(
            self._executor, run_jobs, self.model, jobs, self._call_rows
        )
        for images, seconds in calls:
            self.metrics.model_call(images, seconds)
        return results

    def health_problem(self) -> str | None:
        """Why this replica cannot serve, or None: no model, or a model call past its timeout."""
        if self.model is None:
            return "model not loaded"
        limit = self.config.limits.resolved_model_call_timeout_s()
        running = self.batcher.running_s(time.monotonic())
        if running > limit:
            return f"a model call has run {running:.0f}s, over its timeout of {limit:g}s"
        return None

    def check_health(self) -> None:
        """Serve's periodic replica health check: a replica that fails it is replaced."""
        problem = self.health_problem()
        if problem is not None:
            logger.error("replica %s unhealthy: %s", self.replica_id, problem)
            raise RuntimeError(problem)
        # Re-set every period: a gauge set once at start-up can miss the first export.
        self.metrics.loaded(True)
