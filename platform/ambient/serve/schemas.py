"""Request and response bodies of the HTTP API (pydantic; FastAPI turns them into /docs).

The request model is built from the configured limits, so that FastAPI's own validation rejects an
out-of-range value with a message naming the field and the limit, and /docs shows the real bounds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ambient.core.sampling_spec import RequestedMode, SamplingMode

from .config import LimitsSection

OutputFormat = Literal["json", "png"]
MAX_SEED = 2**32 - 1
MAX_SIDE = 4096


class GenerateRequestBase(BaseModel):
    """Fields and cross-field rules; ``request_model(limits)`` adds the configured bounds."""

    # strict: "4" is not an int and 1.5 is not a count; unknown fields are errors, not silently dropped.
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, description="what to draw")
    negative_prompt: str = Field(
        "", description="what to steer away from (the guidance's unconditional branch)"
    )
    num_images: int = Field(1, ge=1, description="images for this prompt; image i uses seed + i")
    steps: int | None = Field(None, ge=1, description="denoising steps; default from the server config")
    guidance_scale: float | None = Field(None, ge=0, le=50, description="classifier-free guidance scale")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="fixes the images whatever batch they run in; random if absent"
    )
    height: int | None = Field(None, ge=8, le=MAX_SIDE, description="pixels; default: the model's resolution")
    width: int | None = Field(None, ge=8, le=MAX_SIDE, description="pixels; default: the model's resolution")
    sampling_mode: RequestedMode = Field(
        "auto",
        description="auto: the model's trained default (early_stop at sigma_n + one Tweedie step for a model "
        "trained without consistency, full for a consistent one); full or early_stop override it",
    )
    output: OutputFormat = Field("json", description="json: base64 PNGs; png: one image/png (num_images 1)")

    @model_validator(mode="after")
    def _png_is_single(self) -> GenerateRequestBase:
        if self.output == "png" and self.num_images != 1:
            raise ValueError("output 'png' returns one image: num_images must be 1")
        if self.seed is not None and self.seed + self.num_images - 1 > MAX_SEED:
            raise ValueError(f"seed + num_images - 1 must be <= {MAX_SEED}")
        return self


def request_model(limits: LimitsSection) -> type[GenerateRequestBase]:
    """GenerateRequest with the configured limits as field bounds."""
    prompt_chars = limits.max_prompt_chars

    class GenerateRequest(GenerateRequestBase):
        prompt: str = Field(min_length=1, max_length=prompt_chars, description="what to draw")
        negative_prompt: str = Field("", max_length=prompt_chars, description="what to steer away from")
        num_images: int = Field(
            1, ge=1, le=limits.max_images_per_request, description="images for this prompt"
        )
        steps: int | None = Field(None, ge=1, le=limits.max_steps, description="denoising steps")

        @model_validator(mode="after")
        def _pixels(self) -> GenerateRequest:
            h, w = self.height, self.width
            if h is not None and w is not None and h * w > limits.max_pixels:
                raise ValueError(f"height x width = {h * w} pixels exceeds the limit of {limits.max_pixels}")
            return self

    return GenerateRequest


class GeneratedImage(BaseModel):
    seed: int
    png_base64: str


class GenerateResponse(BaseModel):
    request_id: str
    images: list[GeneratedImage]
    width: int
    height: int
    steps: int
    guidance_scale: float
    sampling_mode: SamplingMode
    sigma_stop: float = Field(description="sigma the sampler stopped at (0 for full sampling)")
    model_seconds: float = Field(description="wall time of the model call this request ran in")
    batch_images: int = Field(description="images in that model call (this request's and others')")


class HealthResponse(BaseModel):
    status: Literal["ok", "loading", "stalled"] = Field(
        description="stalled: a model call has run past limits.model_call_timeout_s (503, like loading)"
    )


class ReplicaInfo(BaseModel):
    id: str
    pid: int
    device: str


class ModelInfo(BaseModel):
    source: str = Field(
        description="what was asked for: a path or s3:// URI, 'demo export' or 'tiny default'"
    )
    sigma_n: float
    trained_with_consistency: bool
    default_sampling_mode: SamplingMode
    resolution: int
    vae_scale_factor: int
    dtype: str
    has_metadata: bool = Field(description="false: no ambient_metadata.json, served as a clean model")
    training_steps: int | None = None
    replica: ReplicaInfo


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str
    fields: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    error: ErrorBody
