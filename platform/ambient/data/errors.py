"""Errors of the data plane. Each message names the dataset, shard file or field at fault."""

from __future__ import annotations


class DataError(Exception):
    """Base of every data-plane error."""


class StorageError(DataError):
    """A storage location cannot be reached or read (endpoint, credentials, missing object)."""


class ManifestError(DataError):
    """A dataset has no manifest, an incomplete one, or one of another schema version."""


class ShardError(DataError):
    """A shard listed in the manifest is unreadable or does not match the manifest/schema."""


class NoValidRowsError(DataError):
    """Preparation rejected every input row: nothing to write."""
