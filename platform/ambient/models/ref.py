"""A model reference as a config writes it, and the three things a job does with one.

``ModelRef(path, field)`` holds the reference as written (None for the default base model, a local
folder, or an ``s3://`` prefix) and the config field that holds it, so a missing or malformed model is
reported as that field's error. The driver calls ``check`` before any cluster work (nothing is
downloaded); a worker, replica or audit calls ``local`` (an s3:// model is downloaded once into the
cache of ``ambient.models.source``; a published export resolves to its current version) or
``components`` (the loaded parts). The resolution rule itself, and the cache, live in ``source``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ambient.storage import StorageConfig, is_s3

from .source import check_model, resolve_model

if TYPE_CHECKING:  # loading imports torch and diffusers: only when components are loaded
    import torch

    from .loading import SDXLComponents


@dataclass(frozen=True)
class ModelRef:
    """The model at ``path`` (None: the default base model), named ``field`` in its config."""

    path: str | None = None
    field: str | None = None  # e.g. "model.path", "models[0].path"; None: errors name the path alone

    @property
    def is_default(self) -> bool:
        return self.path is None

    @property
    def is_s3(self) -> bool:
        return self.path is not None and is_s3(self.path)

    @property
    def uri(self) -> str:
        """The reference to hand on (to workers, a run's records): a checked default is its folder."""
        if self.path is None:
            raise ValueError("the default model has no location until it is checked (ModelRef.check)")
        return self.path

    def check(self, storage: StorageConfig | None = None) -> ModelRef:
        """On the driver, before any cluster work: the model exists and is a valid SDXL folder or
        published export (an s3:// one is listed, not downloaded). Returns the reference workers get:
        this one, or for the default the local folder of the default model."""
        return replace(self, path=check_model(self.path, storage, field=self.field))

    def local(self, storage: StorageConfig | None = None) -> Path:
        """On a worker: the checked local folder to load (a published export's current version); an
        s3:// model is downloaded into the cache first, once per content."""
        return resolve_model(self.path, storage, field=self.field)

    def components(
        self,
        storage: StorageConfig | None = None,
        *,
        dtype: torch.dtype | None = None,
        text_encoders: bool = True,
    ) -> tuple[SDXLComponents, Path]:
        """The loaded components (no text encoders and tokenizers when ``text_encoders`` is False; float32
        unless ``dtype``) and the local folder they came from."""
        import torch

        from .loading import load_components

        folder = self.local(storage)
        comps = load_components(folder, dtype or torch.float32, text_encoders=text_encoders)
        return comps, folder

    def __str__(self) -> str:
        return self.path if self.path is not None else "the default base model"
