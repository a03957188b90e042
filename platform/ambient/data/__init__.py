"""The data plane: shard schema, preparation pipeline, validation, Ray Data streaming (storage: ambient.storage).

Names are imported on first use (PEP 562): a Ray read task unpickles ``ambient.data.shard_source``,
which imports this package, and must not pay for torch and the prepare pipeline (2.6 s per new
worker process, measured) to read a Parquet file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "PrepareShardsConfig": "config",
    "DataError": "errors",
    "ManifestError": "errors",
    "NoValidRowsError": "errors",
    "ShardError": "errors",
    "DatasetInfo": "order",
    "PrepareResult": "prepare",
    "prepare_shards": "prepare",
    "SCHEMA_VERSION": "schema",
    "Manifest": "schema",
    "arrow_schema": "schema",
    "collate_batch": "streaming",
    "inspect_dataset": "streaming",
    "iter_training_batches": "streaming",
    "open_dataset": "streaming",
    "stream_epochs": "streaming",
    "load_manifest": "validate",
}

__all__ = [
    "DataError",
    "DatasetInfo",
    "Manifest",
    "ManifestError",
    "NoValidRowsError",
    "PrepareResult",
    "PrepareShardsConfig",
    "SCHEMA_VERSION",
    "ShardError",
    "arrow_schema",
    "collate_batch",
    "inspect_dataset",
    "iter_training_batches",
    "load_manifest",
    "open_dataset",
    "prepare_shards",
    "stream_epochs",
]
assert sorted(__all__) == sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .config import PrepareShardsConfig
    from .errors import DataError, ManifestError, NoValidRowsError, ShardError
    from .order import DatasetInfo
    from .prepare import PrepareResult, prepare_shards
    from .schema import SCHEMA_VERSION, Manifest, arrow_schema
    from .streaming import (
        collate_batch,
        inspect_dataset,
        iter_training_batches,
        open_dataset,
        stream_epochs,
    )
    from .validate import load_manifest
