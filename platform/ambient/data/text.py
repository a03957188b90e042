"""Precomputed text embeddings (``encode.text_embeddings``): their shape, read from the model's configs
before any cluster work, and the dataset's empty-caption embedding file.

The rows carry both text encoders' output as float16 tensor columns (``schema.TEXT_COLUMNS``); the
embedding of the empty caption, which caption dropout trains on, is stored once per dataset in a small
safetensors file named by the manifest (``TextEmbeddingsInfo.empty_caption_file``). numpy only: no torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from ambient.storage import StorageConfig, join, read_bytes, read_text, write_bytes_atomic

from .errors import DataError
from .schema import POOLED_EMBEDS, PROMPT_EMBEDS, TENSOR_DTYPE, Manifest, TextEmbeddingsInfo

# empty-caption-<run id>.safetensors: named by the run like its shards, so a re-run never overwrites the
# file a previous manifest names, and the stale-file cleanup may delete the older ones.
EMPTY_CAPTION_PATTERN = re.compile(r"empty-caption-\d{14}-[0-9a-f]{8}\.safetensors")


def empty_caption_name(run_id: str) -> str:
    return f"empty-caption-{run_id}.safetensors"


@dataclass(frozen=True)
class TextShape:
    """What the text encoders of a model produce per caption: (length, dim) and the pooled dim."""

    length: int
    dim: int
    pooled: int

    def columns(self) -> tuple[tuple[int, int], int]:
        return (self.length, self.dim), self.pooled


def _config(model: str, name: str, storage: StorageConfig | None) -> dict:
    try:
        return json.loads(read_text(join(model, name), storage))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"encode.model {model} has no {name}: encode.text_embeddings needs a diffusers SDXL folder "
            "with both text encoders and tokenizers"
        ) from None


def text_shape(model: str, storage: StorageConfig | None = None) -> TextShape:
    """The embeddings' shape from the encoders' and tokenizers' configs (no weights are read)."""
    first = _config(model, "text_encoder/config.json", storage)
    second = _config(model, "text_encoder_2/config.json", storage)
    lengths = {
        int(_config(model, f"{name}/tokenizer_config.json", storage).get("model_max_length", 77))
        for name in ("tokenizer", "tokenizer_2")
    }
    if len(lengths) != 1:
        raise ValueError(
            f"encode.model {model}: its two tokenizers pad to different lengths {sorted(lengths)}"
        )
    pooled = int(second.get("projection_dim") or second["hidden_size"])
    return TextShape(lengths.pop(), int(first["hidden_size"]) + int(second["hidden_size"]), pooled)


def write_empty_caption(
    uri: str, run_id: str, prompt_embeds: np.ndarray, pooled: np.ndarray, storage: StorageConfig | None
) -> str:
    """Write the empty caption's embeddings, (L, D) and (D2,), atomically; returns the file's name."""
    name = empty_caption_name(run_id)
    tensors = {
        PROMPT_EMBEDS: np.ascontiguousarray(prompt_embeds, dtype=TENSOR_DTYPE),
        POOLED_EMBEDS: np.ascontiguousarray(pooled, dtype=TENSOR_DTYPE),
    }
    write_bytes_atomic(join(uri, name), save_safetensors(tensors), storage)
    return name


def read_empty_caption(
    uri: str, manifest: Manifest, storage: StorageConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's empty-caption embeddings, (L, D) and (D2,) float16, checked against the manifest."""
    info: TextEmbeddingsInfo | None = manifest.text_embeddings
    if info is None:
        raise DataError(f"dataset {uri} carries no text embeddings (prepared without encode.text_embeddings)")
    where = join(uri, info.empty_caption_file)
    try:
        tensors = load_safetensors(read_bytes(where, storage))
    except FileNotFoundError:
        raise DataError(f"{where}: the empty-caption embedding file the manifest names is missing") from None
    except Exception as exc:  # safetensors raises its own error type on a corrupt file
        raise DataError(f"{where} is not a readable safetensors file: {exc}") from None
    (length, dim), pooled = info.columns()
    expected = {PROMPT_EMBEDS: (length, dim), POOLED_EMBEDS: (pooled,)}
    for name, shape in expected.items():
        got = tensors.get(name)
        if got is None or got.shape != shape or got.dtype != TENSOR_DTYPE:
            found = "missing" if got is None else f"{got.dtype} {got.shape}"
            raise DataError(f"{where}: {name} is {found}, the manifest promises float16 {shape}")
    return tensors[PROMPT_EMBEDS], tensors[POOLED_EMBEDS]
