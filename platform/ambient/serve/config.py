"""The serving job's configuration: one typed model, validated before anything is deployed."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, model_validator

from ambient.config import OptionalPathOrUri, Section
from ambient.storage import StorageConfig


class HttpSection(Section):
    host: str = Field("127.0.0.1", description="address Serve's HTTP proxy binds")
    port: int = Field(8000, ge=1, le=65535)
    allow_public_without_token: bool = Field(
        False, description="allow a non-loopback host without auth.token_env (refused by default)"
    )


class AuthSection(Section):
    token_env: str | None = Field(
        None,
        description="environment variable holding the bearer token; None = no authentication",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
    )


class LimitsSection(Section):
    max_images_per_request: int = Field(4, ge=1, le=64)
    max_pixels: int = Field(1024 * 1024, ge=64 * 64, description="height x width of one image")
    max_steps: int = Field(50, ge=1, le=1000)
    max_prompt_chars: int = Field(1000, ge=1)
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="larger request bodies get 413")
    max_request_cost: float = Field(
        100.0,
        gt=0,
        description="megapixel-steps of one request: height x width x num_images x steps x passes / 1e6, "
        "passes = 2 for heun x 2 with guidance (guidance_scale != 1); above it: 422. The default admits "
        "every request at default steps (4 images at 512 px, or 1 at 1024 px, 20 heun steps, guided)",
    )
    request_timeout_s: float = Field(
        300.0,
        gt=0,
        description="a generate request unanswered after this gets 504; its queued work is dropped",
    )
    model_call_timeout_s: float | None = Field(
        None,
        gt=0,
        description="a model call running longer fails the replica's health check (Serve replaces it); "
        "None = request_timeout_s, past which every request in the call has given up",
    )

    def resolved_model_call_timeout_s(self) -> float:
        return self.model_call_timeout_s or self.request_timeout_s


class DefaultsSection(Section):
    steps: int = Field(20, ge=1)
    guidance_scale: float = Field(5.0, ge=0)
    method: Literal["euler", "heun", "posterior"] = Field(
        "heun", description="sampler; heun costs two UNet calls per step"
    )


CPU_CALL_ROWS = 4


class BatchingSection(Section):
    enabled: bool = True
    max_batch_images: int = Field(
        8,
        ge=1,
        description="images (not requests) per Serve batch, and per UNet and VAE call without fixed_shape "
        "(two UNet rows per image with guidance): it bounds the replica's model memory",
    )
    batch_wait_timeout_s: float = Field(0.02, ge=0, le=10)
    max_defer_s: float = Field(
        10.0,
        ge=0,
        description="the cheapest queued call runs next, so that costly requests do not hold up cheap "
        "ones; work that has waited this long goes first, but never twice in a row",
    )
    fixed_shape: bool = Field(
        True,
        description="run every model call at exactly call_rows rows (filler rows dropped), so that a "
        "seed gives bitwise the same images whatever batch it lands in; false: equal up to float "
        "rounding, cheapest at low load",
    )
    call_rows: int | None = Field(
        None,
        ge=1,
        description="rows per model call with fixed_shape; a batch runs as several such calls. None: "
        f"max_batch_images on a GPU, min({CPU_CALL_ROWS}, max_batch_images) on CPU",
    )

    @model_validator(mode="after")
    def _rows_fit(self) -> BatchingSection:
        if self.call_rows is not None and self.call_rows > self.max_batch_images:
            raise ValueError(f"call_rows {self.call_rows} > max_batch_images {self.max_batch_images}")
        return self

    def resolved_call_rows(self, on_gpu: bool) -> int:
        if self.call_rows is not None:
            return self.call_rows
        return self.max_batch_images if on_gpu else min(CPU_CALL_ROWS, self.max_batch_images)


class AutoscalingSection(Section):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(8.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSection:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self


class ReplicaSection(Section):
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(
        0.0, ge=0, description="1 per replica on a GPU cluster; the model then runs on cuda"
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="model weights' dtype (float16 on GPU)"
    )
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads; None = num_cpus (>= 1)")
    max_ongoing_requests: int = Field(32, ge=1, description="per replica; >= batching.max_batch_images")
    max_queued_requests: int = Field(256, ge=-1, description="beyond this callers get 503; -1 = no limit")


class ServeConfig(Section):
    model: OptionalPathOrUri = Field(
        None,
        description="exported diffusers folder (local path or s3:// prefix); None = the newest demo "
        "export if present, else the tiny default model",
    )
    app_name: str = "ambient"
    route_prefix: str = "/"
    http: HttpSection = HttpSection()
    auth: AuthSection = AuthSection()
    limits: LimitsSection = LimitsSection()
    defaults: DefaultsSection = DefaultsSection()
    batching: BatchingSection = BatchingSection()
    autoscaling: AutoscalingSection = AutoscalingSection()
    replica: ReplicaSection = ReplicaSection()
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        if self.defaults.steps > self.limits.max_steps:
            raise ValueError(
                f"defaults.steps {self.defaults.steps} > limits.max_steps {self.limits.max_steps}"
            )
        if self.batching.max_batch_images < self.limits.max_images_per_request:
            # One request's images always run in one model call.
            raise ValueError(
                f"batching.max_batch_images {self.batching.max_batch_images} < "
                f"limits.max_images_per_request {self.limits.max_images_per_request}"
            )
        problem = public_host_problem(self, self.http.host, "http.host")
        if problem:
            raise ValueError(problem)
        return self


def public_host_problem(cfg: ServeConfig, host: str, what: str) -> str | None:
    """Why serving on ``host`` without a token is refused, or None when it is allowed.

    ``what`` names where the host comes from (``http.host``, or Serve's own HTTP options when the
    proxy is not ours to start), so that the message says what to change.
    """
    public = host != "localhost" and not _is_loopback(host)
    if not public or cfg.auth.token_env is not None or cfg.http.allow_public_without_token:
        return None
    return (
        f"{what} {host} is not loopback and auth.token_env is unset: set a token "
        "(auth.token_env) or http.allow_public_without_token=true"
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
