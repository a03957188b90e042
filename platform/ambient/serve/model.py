"""The served model: which folder, loading it with its ambient metadata, and running batches of jobs."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field

import torch

from ambient.config import absolute_path
from ambient.demo_paths import demo_export
from ambient.models.export import read_metadata, sampling_defaults
from ambient.models.folders import METADATA_FILE, POINTER_FILE, check_model_dir
from ambient.models.loading import SDXLComponents, load_components
from ambient.models.ref import ModelRef
from ambient.storage import StorageConfig

from .sampler import SamplingKey, generate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    label: str  # what /v1/model and the startup log call it
    uri: str  # local folder (absolute) or s3:// prefix


def choose_model(model: str | None, storage: StorageConfig | None = None) -> ModelChoice:
    """The model to serve; with none given, the demo's export if present, else the tiny default.

    Runs on the driver: a missing or malformed model fails here, before anything is deployed, and so
    does an export that was never published whole (``loading.resolve_export``). Each replica loads
    the version that is current when it starts.
    """
    if model is not None:
        ModelRef(model).check(storage)
        # Absolute for the replicas, which run in other directories; a config's path already is, but a
        # caller may pass its own (benchmarks/serve_load.py passes its command line's).
        return ModelChoice(model, absolute_path(model))
    export = demo_export()
    if any((export / name).is_file() for name in (POINTER_FILE, "model_index.json", METADATA_FILE)):
        return ModelChoice("demo export", str(check_model_dir(export)))
    return ModelChoice("tiny default", ModelRef().check().uri)


@dataclass
class LoadedModel:
    label: str
    components: SDXLComponents
    sigma_n: float
    trained_with_consistency: bool
    default_mode: str  # the export's recorded default_sampling_mode (else the rule)
    has_metadata: bool
    resolution: int
    training_steps: int | None
    dtype: torch.dtype
    device: torch.device

    @property
    def vae_scale_factor(self) -> int:
        return self.components.vae_scale_factor


def load_model(
    choice: ModelChoice, storage: StorageConfig | None, dtype: torch.dtype, device: torch.device
) -> LoadedModel:
    # safetensors only (check_model_dir refuses pickled weights); s3 is downloaded to a cache first
    folder = ModelRef(choice.uri).local(storage)
    logger.info("model %s: loading %s", choice.label, folder)  # a published export's current version
    components = load_components(folder, dtype=dtype).to(device=device)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        getattr(components, name).eval()
    try:
        meta = read_metadata(folder)
        has_meta = True
    except FileNotFoundError:
        meta, has_meta = {}, False
        logger.warning(
            "model %s has no ambient metadata: serving it as a clean model (sigma_n 0)", choice.label
        )
    f = components.vae_scale_factor
    sampling = sampling_defaults(meta)
    return LoadedModel(
        label=choice.label,
        components=components,
        sigma_n=sampling.sigma_n,
        trained_with_consistency=sampling.trained_with_consistency,
        default_mode=sampling.mode,
        has_metadata=has_meta,
        resolution=int(meta.get("resolution") or components.unet.config.sample_size * f),
        training_steps=meta.get("steps"),
        dtype=dtype,
        device=device,
    )


@dataclass
class Job:
    """One generate request's images, waiting for a model call."""

    key: SamplingKey
    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]
    weight: int  # what it counts against batching.max_batch_images
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class JobResult:
    pngs: list[bytes] = field(default_factory=list)
    model_seconds: float = 0.0
    batch_images: int = 0
    queue_seconds: float = 0.0
    failed: bool = False


def run_jobs(
    model: LoadedModel, jobs: list[Job], call_rows: int | None = None
) -> tuple[list[JobResult], list[tuple[int, float]]]:
    """Run jobs with equal sampling keys together: one model call per key (in calls of ``call_rows``
    rows each when given, see ``generate``).

    Returns each job's result, and (images, seconds) of each model call. A failing call fails only
    its own jobs; the error is logged here, the caller answers them with a generic 500.
    """
    groups: dict[SamplingKey, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.key, []).append(i)
    results = [JobResult() for _ in jobs]
    calls: list[tuple[int, float]] = []
    for key, members in groups.items():
        start = time.monotonic()
        prompts = [p for i in members for p in jobs[i].prompts]
        try:
            images = generate(
                model.components,
                key,
                prompts,
                [p for i in members for p in jobs[i].negative_prompts],
                [s for i in members for s in jobs[i].seeds],
                call_rows=call_rows,
            )
            pngs = [_png(im) for im in images]
        except Exception:
            logger.exception("model call failed (%d images, %s)", len(prompts), key)
            for i in members:
                results[i].failed = True
            continue
        seconds = time.monotonic() - start
        calls.append((len(prompts), seconds))
        offset = 0
        for i in members:
            n = len(jobs[i].prompts)
            r = results[i]
            r.pngs, r.model_seconds, r.batch_images = pngs[offset : offset + n], seconds, len(prompts)
            r.queue_seconds = start - jobs[i].enqueued
            offset += n
    return results, calls


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
