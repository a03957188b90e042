"""Errors of the data plane. Each message names the dataset, shard file or field at fault."""

from __future__ import annotations


class DataError(Exception):
    """Base of every data-plane error."""


class ManifestError(DataError):
    """A dataset has no manifest, an incomplete one, or one of another schema version."""


class ShardError(DataError):
    """A shard listed in the manifest is unreadable or does not match the manifest/schema."""


class NoValidRowsError(DataError):
    """Preparation rejected every input row: nothing to write."""


class VaeMismatchError(DataError):
    """A latent dataset was encoded by another VAE (or scaling) than the model's: its sigma_n is not the
    noise level the model would train at."""
