"""The Serve deployment: one replica loads the model and serves the HTTP API, batching generate calls.

A single deployment (ingress and model in one replica) keeps a request to one hop from Serve's proxy,
which is most of what the overhead budget allows. Model calls run on one worker thread, so the event
loop keeps answering health checks and filling the next batch while a batch runs. The work itself is
``service.SamplerService``; this module adds Serve's wrapping.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import SecretStr
from ray import serve

from .config import ServeConfig
from .http import create_app
from .model import ModelChoice
from .service import SamplerService

DEPLOYMENT_NAME = "Sampler"


@serve.deployment(name=DEPLOYMENT_NAME, health_check_period_s=5, health_check_timeout_s=30)
@serve.ingress()  # the FastAPI app is built per replica (__serve_build_asgi_app__), from its config
class Sampler(SamplerService):
    def __init__(self, config: ServeConfig, choice: ModelChoice, token: SecretStr | None = None) -> None:
        super().__init__(config, choice, token, replica_id=_replica_id())

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self)


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica
        return "local"
