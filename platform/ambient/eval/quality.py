"""Sample quality: FID with user-supplied Inception weights, or a clearly named built-in fallback.

- ``fid``: the Fréchet distance between Inception-v3 pool features (2048-d) of the generated images and
  reference statistics. Inception weights are never downloaded: give ``quality.inception``, a TorchScript
  file of the kind clean-fid and NVlabs' metrics use (``inception-2015-12-05.pt``: called as
  ``model(images, return_features=True)`` on float images in [0, 255], NCHW, any size; it resizes
  itself). The reference is ``quality.reference_stats`` (an ``.npz`` with ``mu`` and ``sigma``, as
  pytorch-fid and clean-fid write) or, without it, the audited training items themselves.
- ``fd_builtin``: the same Fréchet formula in the built-in descriptor space, projected by a fixed seeded
  Gaussian matrix to 64 dimensions (so that few samples give a usable covariance). It is *not* FID and
  is not comparable with published numbers; only with itself, at the same N, items and seed.

Either way, a Fréchet distance from a handful of samples is strongly biased upwards; compare models at
the same N only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

from .features import BuiltinFeatures
from .results import QualitySummary

BUILTIN_DIM = 64
BUILTIN_SEED = 1234
FID_REFERENCE_ITEMS = "audited training items"  # fid_reference without reference statistics


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) (pytorch-fid's formula, with its epsilon fix)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics differ in shape: {mu1.shape}/{s1.shape} and {mu2.shape}/{s2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():  # singular product: nudge the diagonals
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def statistics(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    if f.shape[0] < 2:
        raise ValueError(f"Fréchet statistics need at least 2 samples, got {f.shape[0]}")
    return f.mean(0), np.cov(f, rowvar=False)


def builtin_projection(dim_in: int) -> Tensor:
    gen = torch.Generator().manual_seed(BUILTIN_SEED)
    return torch.randn(dim_in, BUILTIN_DIM, generator=gen) / BUILTIN_DIM**0.5


def fd_builtin(generated: Tensor, reference: Tensor) -> float:
    """The built-in Fréchet distance (not FID) between two uint8/[-1, 1] image batches."""
    extractor = BuiltinFeatures()
    a, b = extractor.embed(generated), extractor.embed(reference)
    proj = builtin_projection(a.shape[1])
    return frechet_distance(*statistics(a @ proj), *statistics(b @ proj))


class InceptionFeatures:
    """A TorchScript Inception-v3 from a local file; pool features (N, 2048)."""

    def __init__(self, path: str | Path) -> None:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"quality.inception: {file} does not exist")
        try:
            # TorchScript, not pickle: no arbitrary Python runs on load.
            self.model = torch.jit.load(str(file), map_location="cpu").eval()
        except Exception as err:
            raise ValueError(
                f"quality.inception: {file} is not a TorchScript Inception (e.g. clean-fid's "
                f"inception-2015-12-05.pt): {err}"
            ) from None

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        x = images.float() if images.dtype == torch.uint8 else (images.float() + 1) * 127.5
        out = self.model(x, return_features=True)
        return out.reshape(len(x), -1).float()


def load_reference_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    file = Path(path)
    try:
        with np.load(file, allow_pickle=False) as data:
            return data["mu"], data["sigma"]
    except FileNotFoundError:
        raise FileNotFoundError(f"quality.reference_stats: {file} does not exist") from None
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(
            f"quality.reference_stats: {file} is not an .npz with mu and sigma ({err})"
        ) from None


def quality_metrics(
    generated: Tensor,
    reference: Tensor,
    *,
    inception: str | None = None,
    reference_stats: str | None = None,
    batch_size: int = 32,
) -> QualitySummary:
    """The built-in Fréchet distance (None below 2 images on a side) and, with ``inception``, FID
    against ``reference_stats`` or the reference images."""
    builtin = fd_builtin(generated, reference) if len(generated) >= 2 and len(reference) >= 2 else None
    fid, fid_reference = None, None
    if inception:
        model = InceptionFeatures(inception)
        gen = torch.cat([model.embed(c) for c in generated.split(batch_size)])
        if reference_stats:
            ref_stats, fid_reference = load_reference_stats(reference_stats), str(reference_stats)
        else:
            ref = torch.cat([model.embed(c) for c in reference.split(batch_size)])
            ref_stats, fid_reference = statistics(ref), FID_REFERENCE_ITEMS
        fid = frechet_distance(*statistics(gen), *ref_stats)
    return QualitySummary(
        n_generated=len(generated),
        n_reference=len(reference),
        fd_builtin=builtin,
        fid=fid,
        fid_reference=fid_reference,
    )
