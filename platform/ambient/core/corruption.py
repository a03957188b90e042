"""Frozen corruption: the noise of every sample is a function of (sample id, seed), drawn once.

Redrawing the data noise across epochs would average it away and leak the clean image, so every
noise draw here is deterministic. Training above the data's level adds extra noise from a separate
stream of the same (id, seed), equally frozen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import as_sigma

SampleId = int | str


def sample_seed(sample_id: SampleId, seed: int, stream: str = "data") -> int:
    """A stable 63-bit seed for one sample (independent of Python's hash randomisation)."""
    digest = hashlib.blake2b(f"{stream}\x00{seed}\x00{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def frozen_noise(
    ids: Sequence[SampleId],
    seed: int,
    shape: tuple[int, ...],
    *,
    stream: str = "data",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of ``shape`` per id, the same for the same (id, seed, stream) forever."""
    out = torch.empty((len(ids), *shape), dtype=torch.float32)
    gen = torch.Generator()
    for i, sample_id in enumerate(ids):
        gen.manual_seed(sample_seed(sample_id, seed, stream))
        out[i] = torch.randn(shape, generator=gen)
    return out.to(dtype)


def corrupt(x0: Tensor, sigma_n: Tensor | float, ids: Sequence[SampleId], seed: int) -> Tensor:
    """y = x0 + sigma_n z with z frozen per sample."""
    if len(ids) != x0.shape[0]:
        raise ValueError(f"got {len(ids)} ids for a batch of {x0.shape[0]} samples")
    z = frozen_noise(ids, seed, tuple(x0.shape[1:]), dtype=x0.dtype).to(x0.device)
    return x0 + as_sigma(sigma_n, x0, "sigma_n") * z


def raise_noise_level(
    y: Tensor,
    sigma_n: Tensor | float,
    sigma_train: Tensor | float,
    ids: Sequence[SampleId],
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Carry y from its data level sigma_n up to sigma_train with frozen extra noise.

    Returns (y', sigma') where sigma' = max(sigma_n, sigma_train) per sample: rows already noisier
    than sigma_train are left as they are.
    """
    if len(ids) != y.shape[0]:
        raise ValueError(f"got {len(ids)} ids for a batch of {y.shape[0]} samples")
    sn = as_sigma(sigma_n, y, "sigma_n")
    st = as_sigma(sigma_train, y, "sigma_train")
    sn, st = torch.broadcast_tensors(sn, st)
    target = torch.maximum(sn, st)
    z = frozen_noise(ids, seed, tuple(y.shape[1:]), stream="extra", dtype=y.dtype).to(y.device)
    y_out = y + (target**2 - sn**2).sqrt() * z
    return y_out, target.reshape(y.shape[0], -1)[:, 0].clone()
