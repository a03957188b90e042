"""The Serve deployment: one replica loads the model and serves the HTTP API, batching generate calls.

A single deployment (ingress and model in one replica) keeps a request to one hop from Serve's proxy,
which is most of what the overhead budget allows. Model calls run on one worker thread, so the event
loop keeps answering health checks and filling the next batch while a batch runs.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import torch
from fastapi import FastAPI
from pydantic import SecretStr
from ray import serve

from .auth import BearerAuth
from .config import ServeConfig
from .http import create_app
from .metrics import ServeMetrics
from .model import Job, JobResult, LoadedModel, ModelChoice, load_model, run_jobs

logger = logging.getLogger("ray.serve")  # Serve routes this logger to the replica's log file

DEPLOYMENT_NAME = "Sampler"


def _batch_weight(jobs: list[Job]) -> int:
    return sum(job.weight for job in jobs)


@serve.deployment(name=DEPLOYMENT_NAME, health_check_period_s=5, health_check_timeout_s=30)
@serve.ingress()  # the FastAPI app is built per replica (__serve_build_asgi_app__), from its config
class Sampler:
    def __init__(self, config: ServeConfig, choice: ModelChoice, token: SecretStr | None = None) -> None:
        self.config = config
        self.metrics = ServeMetrics()
        self.metrics.loaded(False)
        self.auth = BearerAuth(config.auth.token_env, token)
        self.replica_id = _replica_id()
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
        self._generate_batch.set_max_batch_size(b.max_batch_images)
        self._generate_batch.set_batch_wait_timeout_s(b.batch_wait_timeout_s if b.enabled else 0.0)
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

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self)

    async def submit(self, job: Job) -> JobResult:
        return await self._generate_batch(job)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02, batch_size_fn=_batch_weight)
    async def _generate_batch(self, jobs: list[Job]) -> list[JobResult]:
        loop = asyncio.get_running_loop()
        results, calls = await loop.run_in_executor(
            self._executor, run_jobs, self.model, jobs, self._call_rows
        )
        for images, seconds in calls:
            self.metrics.model_call(images, seconds)
        return results

    def check_health(self) -> None:
        """Serve's periodic replica health check: a replica without its model is replaced."""
        if self.model is None:
            raise RuntimeError("model not loaded")
        self.metrics.loaded(
            True
        )  # re-set every period: a gauge set once at start-up can miss the first export


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica (unit tests)
        return "local"
