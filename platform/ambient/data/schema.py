"""The shard format: one definition of the columns, the Arrow schema and the manifest.

A dataset is a folder (local or ``s3://``) holding Parquet shards and a ``manifest.json`` written
last. Readers trust only the files the manifest lists, so shards of an unfinished or older run that
share the folder are never read.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field
from ray.data.extensions import ArrowTensorArray, ArrowTensorTypeV2

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SUMMARY_NAME = "summary.json"
SHARD_SUFFIX = ".parquet"

Space = Literal["latent", "image"]
# The tensor column is named after the space: `latent` (VAE's scaled latent space) or `image` ([-1, 1]).
TENSOR_DTYPE = np.float16
COLUMNS = ("id", "<tensor>", "sigma_n", "caption", "original_size_hw", "crop_top_left", "noise_seed")
# With encode.text_embeddings the rows also carry both text encoders' output (float16 tensors):
# prompt_embeds (L, D1 + D2), the penultimate hidden states concatenated, and pooled_prompt_embeds (D2,).
PROMPT_EMBEDS = "prompt_embeds"
POOLED_EMBEDS = "pooled_prompt_embeds"
TEXT_COLUMNS = (PROMPT_EMBEDS, POOLED_EMBEDS)


def tensor_column(space: Space) -> str:
    return "latent" if space == "latent" else "image"


def arrow_schema(
    space: Space, shape: tuple[int, ...], text: tuple[tuple[int, int], int] | None = None
) -> pa.Schema:
    """The exact Arrow schema of every shard of a dataset with tensors of ``shape`` (C, H, W); ``text``
    ((L, D), pooled D2) adds the two text-embedding columns."""
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field(tensor_column(space), ArrowTensorTypeV2(tuple(shape), pa.float16()), nullable=False),
        pa.field("sigma_n", pa.float32(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("original_size_hw", ArrowTensorTypeV2((2,), pa.int32()), nullable=False),
        pa.field("crop_top_left", ArrowTensorTypeV2((2,), pa.int32()), nullable=False),
        pa.field("noise_seed", pa.int64(), nullable=False),
    ]
    if text is not None:
        (length, dim), pooled = text
        fields += [
            pa.field(PROMPT_EMBEDS, ArrowTensorTypeV2((length, dim), pa.float16()), nullable=False),
            pa.field(POOLED_EMBEDS, ArrowTensorTypeV2((pooled,), pa.float16()), nullable=False),
        ]
    return pa.schema(fields)


def dataset_schema(manifest: Manifest) -> pa.Schema:
    """The Arrow schema every shard of ``manifest``'s dataset has."""
    text = manifest.text_embeddings
    return arrow_schema(
        manifest.space, tuple(manifest.tensor_shape), text.columns() if text is not None else None
    )


def make_table(
    space: Space,
    ids: list[str],
    tensors: np.ndarray,
    sigma_n: np.ndarray,
    captions: list[str],
    original_size_hw: np.ndarray,
    crop_top_left: np.ndarray,
    noise_seed: int,
    prompt_embeds: np.ndarray | None = None,
    pooled_prompt_embeds: np.ndarray | None = None,
) -> pa.Table:
    """Build one shard's table in the canonical schema (types are cast, never inferred); the text
    embeddings, (N, L, D) and (N, D2), come together or not at all."""
    n = len(ids)
    if (prompt_embeds is None) != (pooled_prompt_embeds is None):
        raise ValueError("prompt_embeds and pooled_prompt_embeds go together")
    text = None
    if prompt_embeds is not None:
        text = ((prompt_embeds.shape[1], prompt_embeds.shape[2]), pooled_prompt_embeds.shape[1])
    schema = arrow_schema(space, tuple(tensors.shape[1:]), text)
    columns = [
        pa.array(ids, pa.string()),
        ArrowTensorArray.from_numpy(np.ascontiguousarray(tensors, dtype=TENSOR_DTYPE)),
        pa.array(np.asarray(sigma_n, np.float32)),
        pa.array(captions, pa.string()),
        ArrowTensorArray.from_numpy(np.asarray(original_size_hw, np.int32).reshape(n, 2)),
        ArrowTensorArray.from_numpy(np.asarray(crop_top_left, np.int32).reshape(n, 2)),
        pa.array(np.full(n, noise_seed, np.int64)),
    ]
    if text is not None:
        columns += [
            ArrowTensorArray.from_numpy(np.ascontiguousarray(prompt_embeds, dtype=TENSOR_DTYPE)),
            ArrowTensorArray.from_numpy(np.ascontiguousarray(pooled_prompt_embeds, dtype=TENSOR_DTYPE)),
        ]
    return pa.Table.from_arrays(columns, schema=schema)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShardEntry(_Model):
    file: str = Field(description="file name relative to the dataset folder")
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)


class SigmaStats(_Model):
    min: float
    max: float
    mean: float
    clean_rows: int = Field(ge=0, description="rows with sigma_n == 0")


class VaeIdentity(_Model):
    model: str = Field(description="model folder the VAE came from (its `vae` subfolder)")
    config_sha256: str
    weights_sha256: str | None = None
    scaling_factor: float
    shift_factor: float | None = None
    latent_channels: int
    downsample_factor: int


class NoiseInfo(_Model):
    seed: int
    sigma_n: float = Field(ge=0, description="VE sigma of the added noise")
    t_n: float | None = Field(default=None, description="SDXL DDPM timestep, when given that way")


class TextEmbeddingsInfo(_Model):
    """The rows carry precomputed text embeddings; training then loads no text encoders."""

    model: str = Field(description="model folder whose text encoders made them")
    sequence_length: int = Field(ge=1, description="L of prompt_embeds (the tokenizers' 77)")
    prompt_dim: int = Field(ge=1, description="D of prompt_embeds: both encoders' hidden sizes")
    pooled_dim: int = Field(ge=1, description="text_encoder_2's projection size")
    empty_caption_file: str = Field(
        description="safetensors file in the dataset folder holding the embeddings of the empty caption "
        "(what caption dropout trains on), tensors prompt_embeds (L, D) and pooled_prompt_embeds (D2,)"
    )

    def columns(self) -> tuple[tuple[int, int], int]:
        return (self.sequence_length, self.prompt_dim), self.pooled_dim


class Manifest(_Model):
    """All a reader needs before touching a shard; ``complete`` is set only by the writer's last step."""

    dataset_id: str
    schema_version: int
    complete: bool
    created_at: str
    space: Space
    tensor_shape: list[int] = Field(description="(C, H, W) of the latent/image column")
    resolution: int = Field(description="image resolution in pixels (square)")
    num_rows: int = Field(ge=0)
    num_shards: int = Field(ge=0)
    shards: list[ShardEntry]
    sigma_n: SigmaStats
    noise: NoiseInfo
    vae: VaeIdentity | None = None
    text_embeddings: TextEmbeddingsInfo | None = None
    source: dict = Field(default_factory=dict)

    @property
    def tensor_column(self) -> str:
        return tensor_column(self.space)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
