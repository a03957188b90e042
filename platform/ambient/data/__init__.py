"""The data plane: shard schema, preparation pipeline, validation, Ray Data streaming, storage."""

from .config import PrepareShardsConfig
from .errors import DataError, ManifestError, NoValidRowsError, ShardError, StorageError
from .prepare import PrepareResult, prepare_shards
from .schema import SCHEMA_VERSION, Manifest, arrow_schema
from .storage import (
    StorageConfig,
    download_prefix,
    is_s3,
    read_text,
    resolve_filesystem,
    upload_directory,
    write_bytes_atomic,
)
from .streaming import (
    DatasetInfo,
    collate_batch,
    inspect_dataset,
    iter_training_batches,
    open_dataset,
    stream_epochs,
)
from .validate import load_manifest

__all__ = [
    "SCHEMA_VERSION",
    "DataError",
    "DatasetInfo",
    "Manifest",
    "ManifestError",
    "NoValidRowsError",
    "PrepareResult",
    "PrepareShardsConfig",
    "ShardError",
    "StorageConfig",
    "StorageError",
    "arrow_schema",
    "collate_batch",
    "download_prefix",
    "inspect_dataset",
    "is_s3",
    "iter_training_batches",
    "load_manifest",
    "open_dataset",
    "prepare_shards",
    "read_text",
    "resolve_filesystem",
    "stream_epochs",
    "upload_directory",
    "write_bytes_atomic",
]
