"""Argument checks shared by the core modules: per-sample sigmas that broadcast, clear errors."""

from __future__ import annotations

import torch
from torch import Tensor


def as_sigma(sigma: float | Tensor, like: Tensor, name: str) -> Tensor:
    """Return ``sigma`` as a tensor broadcastable against ``like`` (batch first).

    A scalar applies to every sample; a 1-D tensor of length ``like.shape[0]`` is per sample and is
    reshaped to (B, 1, 1, ...). Negative or non-finite values raise a ValueError naming ``name``.
    """
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if s.ndim > 1:
        s = s.reshape(-1) if s.numel() == like.shape[0] else s
    if s.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a 1-D per-sample tensor, got shape {tuple(s.shape)}")
    if s.ndim == 1 and s.shape[0] not in (1, like.shape[0]):
        raise ValueError(
            f"{name} has {s.shape[0]} entries but the batch has {like.shape[0]} samples "
            f"(shape {tuple(like.shape)})"
        )
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} must be finite, got {s.flatten()[:8].tolist()}")
    if (s < 0).any():
        raise ValueError(f"{name} must be >= 0, got minimum {s.min().item():.6g}")
    if s.ndim == 1:
        s = s.reshape(-1, *([1] * (like.ndim - 1)))
    return s


def per_sample(sigma: float | Tensor, batch: int, like: Tensor, name: str) -> Tensor:
    """Return ``sigma`` as a 1-D tensor of length ``batch`` (expanding a scalar)."""
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device).reshape(-1)
    if s.numel() == 1:
        s = s.expand(batch)
    if s.numel() != batch:
        raise ValueError(f"{name} has {s.numel()} entries but the batch has {batch} samples")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} must be finite")
    if (s < 0).any():
        raise ValueError(f"{name} must be >= 0, got minimum {s.min().item():.6g}")
    return s.clone()


def same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}")


def flat_mean(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch: one number per sample."""
    return x.reshape(x.shape[0], -1).mean(dim=1)
