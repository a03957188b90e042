"""What the driver resolved before starting the workers (sent to every worker)."""

from __future__ import annotations

from dataclasses import dataclass

from ambient.models.conditioning import TextEmbeddings

from .layout import RunLayout


@dataclass(frozen=True)
class RunPlan:
    model_source: str  # local diffusers folder or s3:// prefix
    prediction_type: str  # the scheduler's: epsilon or v_prediction
    data_uri: str
    sigma_n: float  # the level the model is trained at (the dataset's, or loss.sigma_train)
    sampling_mode: str  # "full" or "early_stop"
    resolution: int
    layout: RunLayout  # where the checkpoints, samples, loss curve, export and summary go
    data_split: str = "exact"  # data.split: "exact" (the worker streams its share) or "ray_split"
    # The dataset's and row plan's SHA-256 (ambient.train.resume): stored in every checkpoint, and a
    # resume over other data is refused.
    data_identity: dict[str, str] | None = None


@dataclass(frozen=True)
class StoredText:
    """A run on a dataset that carries text embeddings (``encode.text_embeddings``): what the workers
    condition on in place of the text encoders, which they then never load."""

    empty_caption: TextEmbeddings  # one row: the dataset's empty caption (caption dropout, CFG's negative)
    prompts: TextEmbeddings  # validation.prompts in order, for the sample grids
