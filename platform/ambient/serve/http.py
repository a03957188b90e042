"""The HTTP API: FastAPI routes, auth and size checks, and error handlers that leak nothing.

Every error body is ``{"error": {"code", "message", "request_id", "fields"}}``. Validation errors (422)
name the field and the rule, never echo the input; anything unexpected is a 500 with a generic message
and the request id, under which the replica logs the traceback.

The body cap holds whatever the client says: a Content-Length over it is refused before the body is
read, and a body that turns out longer (chunked, without a Content-Length) is refused as soon as the
read passes the cap; nothing past it is read.

A generate request costs at most ``limits.max_request_cost`` (422 naming it otherwise) and waits at most
``limits.request_timeout_s`` (504); a request whose client has gone or whose time ran out is dropped
from the queue before its model call starts (the batcher's contract).
"""

import asyncio
import base64
import logging
import os
import re
import secrets
import time
import uuid
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ambient.core.sampling_spec import sampling_spec

from .auth import BearerAuth
from .config import ServeConfig
from .cost import cost_problem
from .metrics import ServeMetrics
from .model import Job, JobResult, LoadedModel
from .sampler import SamplingKey
from .schemas import (
    MAX_SEED,
    ErrorResponse,
    GeneratedImage,
    GenerateRequestBase,
    GenerateResponse,
    HealthResponse,
    ModelInfo,
    ReplicaInfo,
    request_model,
)

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ERRORS = {422: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 500: {"model": ErrorResponse}}
_GENERATE_ERRORS = {
    **_ERRORS,
    413: {"model": ErrorResponse},
    415: {"model": ErrorResponse},
    504: {"model": ErrorResponse},
}


class Service(Protocol):
    """What the routes need from the deployment."""

    config: ServeConfig
    model: LoadedModel | None
    auth: BearerAuth
    metrics: ServeMetrics
    replica_id: str

    async def submit(self, job: Job) -> JobResult: ...

    def health_problem(self) -> str | None: ...


def error_response(
    status: int, code: str, message: str, request_id: str, fields=None, headers=None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "request_id": request_id, "fields": fields or []}}
    if status == 413:  # the rest of the body is not read: end the connection instead of draining it
        headers = {**(headers or {}), "Connection": "close"}
    return JSONResponse(body, status_code=status, headers=headers)


def field_error(field: str, message: str) -> RequestValidationError:
    """A 422 about one body field, raised where a rule needs the loaded model (e.g. the VAE factor)."""
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


def _describe(err: dict[str, Any]) -> tuple[str, str]:
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    kind = err.get("type", "")
    if kind == "json_invalid":
        return "body", "the request body is not valid JSON"
    if kind == "extra_forbidden":
        return ".".join(loc), "unknown field"
    if kind == "missing":
        return ".".join(loc) or "body", "field required"
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind in ("model_attributes_type", "dict_type") and not loc:
        msg = "the request body must be a JSON object"
    return ".".join(loc) or "body", msg


class BodyLimit:
    """ASGI middleware: reading more than ``max_bytes`` of a request body raises a 413.

    It counts what the app reads, so it holds for chunked bodies and whatever the headers claim; the
    read that passes the cap is the last (FastAPI hands an HTTPException raised while it reads the
    body to the exception handlers, and the route never runs).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(413, too_large(self.max_bytes))
            return message

        await self.app(scope, limited, send)


def too_large(max_bytes: int) -> str:
    return f"the request body exceeds {max_bytes} bytes"


def create_app(service: Service) -> FastAPI:
    app = FastAPI(
        title="Ambient sampler",
        version="1",
        description="Text-to-image sampling from an SDXL model fine-tuned with ambient diffusion. "
        "See docs/api.md.",
    )
    # Added first, so it runs inside the gatekeeper (the last middleware added is the outermost).
    app.add_middleware(BodyLimit, max_bytes=service.config.limits.max_body_bytes)
    _add_gatekeeper(app, service)
    _add_error_handlers(app)
    bearer = HTTPBearer(auto_error=False)  # documents the scheme in /docs; the gatekeeper enforces it
    _add_info_routes(app, service, bearer)
    _add_generate_route(app, service, bearer)
    return app


def _add_gatekeeper(app: FastAPI, service: Service) -> None:
    """The outermost layer: request id, auth and cheap refusals, and the request metrics of every answer."""

    @app.middleware("http")
    async def gatekeeper(request: Request, call_next):
        start = time.monotonic()
        given = request.headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        request.state.request_id = request_id
        path = _route_path(request)
        response = _refuse(service, request, path, request_id)
        if response is None:
            try:
                response = await call_next(request)
            except Exception:  # answered by on_crash outside this middleware; count it here
                service.metrics.request(path, 500, time.monotonic() - start)
                raise
        if not given:  # Serve's proxy sets X-Request-ID itself (and passes it in) when it fronts us
            response.headers["X-Request-ID"] = request_id
        service.metrics.request(path, response.status_code, time.monotonic() - start)
        return response


def _refuse(service: Service, request: Request, path: str, request_id: str) -> Response | None:
    """Auth, then the cheap checks on a generate request, before its body is read."""
    reason = service.auth.check(path, request.headers.get("authorization"))
    if reason is not None:
        return error_response(401, "unauthorized", reason, request_id, headers={"WWW-Authenticate": "Bearer"})
    if request.method == "POST" and path == "/v1/generate":
        max_bytes = service.config.limits.max_body_bytes
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return error_response(
                415, "unsupported_media_type", "Content-Type must be application/json", request_id
            )
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_bytes):
            # A body without (or beyond) its Content-Length is capped while it is read (BodyLimit).
            return error_response(413, "body_too_large", too_large(max_bytes), request_id)
    return None


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in the one body shape; validation errors name the field, crashes only the request id."""

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [dict(zip(("field", "message"), _describe(e), strict=True)) for e in exc.errors()]
        message = "; ".join(f"{f['field']}: {f['message']}" for f in fields) or "invalid request"
        return error_response(422, "invalid_request", message, request.state.request_id, fields)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 503: "unavailable"}
        return error_response(
            exc.status_code,
            codes.get(exc.status_code, "error"),
            str(exc.detail),
            getattr(request.state, "request_id", ""),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", uuid.uuid4().hex)
        logger.error("request %s failed", request_id, exc_info=exc)
        return error_response(500, "internal_error", "internal error; quote the request id", request_id)


def _add_info_routes(app: FastAPI, service: Service, bearer: HTTPBearer) -> None:
    """/v1/health (open) and /v1/model."""

    @app.get("/v1/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health() -> Any:
        if service.model is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        # The same rule as Serve's replica health check: a hung model call fails both.
        if service.health_problem() is not None:
            return JSONResponse({"status": "stalled"}, status_code=503)
        return HealthResponse(status="ok")

    @app.get("/v1/model", response_model=ModelInfo, dependencies=[Depends(bearer)], responses=_ERRORS)
    async def model_info() -> ModelInfo:
        m = _ready(service)
        return ModelInfo(
            source=m.label,
            sigma_n=m.sigma_n,
            trained_with_consistency=m.trained_with_consistency,
            default_sampling_mode=m.default_mode,
            resolution=m.resolution,
            vae_scale_factor=m.vae_scale_factor,
            dtype=str(m.dtype).removeprefix("torch."),
            has_metadata=m.has_metadata,
            training_steps=m.training_steps,
            replica=ReplicaInfo(id=service.replica_id, pid=os.getpid(), device=str(m.device)),
        )


def _add_generate_route(app: FastAPI, service: Service, bearer: HTTPBearer) -> None:
    """/v1/generate: its request model carries the configured limits."""
    cfg = service.config
    GenerateRequest = request_model(cfg.limits)

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        dependencies=[Depends(bearer)],
        responses={**_GENERATE_ERRORS, 200: {"content": {"image/png": {}}}},
    )
    # (No `from __future__ import annotations` in this module: FastAPI must see this class itself.)
    async def generate(body: GenerateRequest, request: Request) -> Any:  # type: ignore[valid-type]
        request_id = request.state.request_id
        job = _job(cfg, _ready(service), body)
        problem = cost_problem(job.key, len(job.seeds), cfg.limits.max_request_cost)
        if problem is not None:
            return error_response(422, "over_cost_limit", problem, request_id)
        timeout = cfg.limits.request_timeout_s
        try:
            # On timeout wait_for cancels the submit, which drops the job unless its call has started.
            result = await asyncio.wait_for(service.submit(job), timeout)
        except TimeoutError:
            message = f"no result within limits.request_timeout_s ({timeout:g}s); the service is busy"
            return error_response(504, "timeout", message, request_id)
        if result.failed:  # logged with its traceback where it ran (run_jobs)
            return error_response(500, "internal_error", "internal error; quote the request id", request_id)
        service.metrics.generated(len(result.pngs), job.key.spec.steps, result.queue_seconds)
        if body.output == "png":
            return Response(result.pngs[0], media_type="image/png", headers={"X-Seed": str(job.seeds[0])})
        return _generate_response(job, result, request_id)


def _generate_response(job: Job, result: JobResult, request_id: str) -> GenerateResponse:
    spec = job.key.spec
    return GenerateResponse(
        request_id=request_id,
        images=[
            GeneratedImage(seed=s, png_base64=base64.b64encode(p).decode())
            for s, p in zip(job.seeds, result.pngs, strict=True)
        ],
        width=job.key.width,
        height=job.key.height,
        steps=spec.steps,
        guidance_scale=spec.guidance,
        sampling_mode=spec.mode,
        sigma_stop=spec.sigma_stop,
        model_seconds=round(result.model_seconds, 4),
        batch_images=result.batch_images,
    )


def _route_path(request: Request) -> str:
    """The path within the app: Serve mounts it under its route_prefix (the ASGI root_path)."""
    path, root = request.url.path, request.scope.get("root_path", "")
    return path[len(root) :] or "/" if root and path.startswith(root) else path


def _ready(service: Service) -> LoadedModel:
    if service.model is None:
        raise StarletteHTTPException(503, "the model is not loaded yet")
    return service.model


def _job(cfg: ServeConfig, m: LoadedModel, body: GenerateRequestBase) -> Job:
    """Checks that need the loaded model, then the job with its per-image seeds."""
    f = m.vae_scale_factor
    height = body.height or m.resolution
    width = body.width or m.resolution
    for name, value in (("height", height), ("width", width)):
        if value % f:
            raise field_error(name, f"must be a multiple of {f} (the model's VAE factor), got {value}")
    if height * width > cfg.limits.max_pixels:
        raise field_error(
            "height", f"height x width = {height * width} pixels exceeds {cfg.limits.max_pixels}"
        )
    # The API's field names (steps, guidance_scale, sampling_mode) are public; the spec's are internal.
    spec = sampling_spec(
        body.sampling_mode,
        m.sigma_n,
        m.default_mode,
        steps=body.steps or cfg.defaults.steps,
        guidance=body.guidance_scale if body.guidance_scale is not None else cfg.defaults.guidance_scale,
        method=cfg.defaults.method,
    )
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED - body.num_images)
    key = SamplingKey(spec, height, width)
    n = body.num_images
    # A request is one unit of batching: with batching off it fills a whole model call.
    weight = n if cfg.batching.enabled else cfg.batching.max_batch_images
    return Job(key, [body.prompt] * n, [body.negative_prompt] * n, [seed + i for i in range(n)], weight)
