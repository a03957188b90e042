"""Small model folders the tests build on disk."""

from __future__ import annotations

from pathlib import Path


def save_tiny_base(path: Path) -> Path:
    """The tiny SDXL-architecture pipeline (seed 0, 32 px) as a diffusers folder at ``path``."""
    from ambient.models import build_tiny_pipeline

    build_tiny_pipeline(seed=0, resolution=32).save_pretrained(path, safe_serialization=True)
    return path
