"""Image features for similarity: a built-in pixel descriptor (no download) or DINOv2 from a local folder.

Similarities are cosines of feature vectors. The built-in descriptor's colours are centred on the
reference set's mean (the training items) before the cosine, so what every image of the set shares
(the average colour) does not count as similarity; DINOv2 features are compared raw, as the authors do.

The built-in descriptor measures *pixel-level near-duplication*: multi-scale average colours (4x4,
8x8, 16x16) and signed per-channel colour gradients (8x8, 16x16) of the image, each block scaled by a
fixed constant so that no block dominates and colours and edges weigh about the same. It is blind to semantics (the same object moved or restyled is not similar), not
invariant to shifts larger than a pooling cell, crops, flips or colour changes, and its absolute
values depend on the reference set it is centred on. Use DINOv2 for semantic copies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

COLOUR_SCALES = (4, 8, 16)
GRADIENT_SCALES = (8, 16)
GRADIENT_WEIGHT = 8.0  # edges are sparse: weighted so that colours and gradients carry about equal energy
COLOUR_DIMS = 3 * sum(s * s for s in COLOUR_SCALES)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureExtractor(Protocol):
    name: str
    centred: slice | None  # feature dims centred on the reference set's mean (None: none)

    def embed(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) pixels in [-1, 1] -> (B, D) float32 raw features."""
        ...


def as_unit_pixels(images: Tensor) -> Tensor:
    """uint8 [0, 255] or float [-1, 1] images -> float32 [-1, 1]."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1
    return images.float()


class BuiltinFeatures:
    """Multi-scale colour and gradient descriptor (see the module docstring for what it cannot see)."""

    name = "builtin"
    # Only the colours are centred. Gradients are zero-mean over positions already; centring them on a
    # few items would plant a shared "average edge" that makes an edgeless image look like every item.
    centred = slice(0, COLOUR_DIMS)

    @torch.no_grad()
    def embed(self, pixels: Tensor) -> Tensor:
        x = as_unit_pixels(pixels)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"pixels must be (B, 3, H, W), got {tuple(x.shape)}")
        blocks = [F.adaptive_avg_pool2d(x, s).flatten(1) for s in COLOUR_SCALES]
        # Gradients per colour channel, not of luminance: a red shape on a purple ground is nearly
        # iso-luminant, and its edges would vanish.
        fine = F.adaptive_avg_pool2d(x, 2 * max(GRADIENT_SCALES))
        gx = F.pad(fine[..., :, 1:] - fine[..., :, :-1], (0, 1))
        gy = F.pad(fine[..., 1:, :] - fine[..., :-1, :], (0, 0, 0, 1))
        grad = torch.cat([gx, gy], dim=1)
        blocks += [GRADIENT_WEIGHT * F.adaptive_avg_pool2d(grad, s).flatten(1) for s in GRADIENT_SCALES]
        return torch.cat([b / b.shape[1] ** 0.5 for b in blocks], dim=1)


class DinoV2Features:
    """DINOv2 image embeddings (the pooled CLS token) from a local transformers folder; no download."""

    name = "dinov2"
    centred = None

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu") -> None:
        from transformers import AutoModel

        root = Path(weights)
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"features.weights: {root} has no config.json (not a transformers model)")
        self.model = AutoModel.from_pretrained(root, local_files_only=True).to(device).eval()
        self.size, self.mean, self.std = 224, IMAGENET_MEAN, IMAGENET_STD
        prep = root / "preprocessor_config.json"
        if prep.is_file():  # the authors' preprocessing, read without the image-processor classes
            cfg = json.loads(prep.read_text())
            crop = cfg.get("crop_size") or {}
            self.size = int(crop.get("height") or cfg.get("size", {}).get("shortest_edge") or 224)
            self.mean = tuple(cfg.get("image_mean", self.mean))
            self.std = tuple(cfg.get("image_std", self.std))

    @torch.no_grad()
    def embed(self, pixels: Tensor) -> Tensor:
        x = (as_unit_pixels(pixels) + 1) / 2
        x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        device = next(self.model.parameters()).device
        out = self.model(pixel_values=((x - mean) / std).to(device))
        pooled = getattr(out, "pooler_output", None)
        return (pooled if pooled is not None else out.last_hidden_state[:, 0]).float().cpu()


def build_extractor(kind: str, weights: str | None = None) -> FeatureExtractor:
    if kind == "builtin":
        return BuiltinFeatures()
    if kind == "dinov2":
        if not weights:
            raise ValueError("features.weights is required for DINOv2 (a local folder)")
        return DinoV2Features(weights)
    raise ValueError(f"features.kind must be builtin or dinov2, got {kind!r}")


class FeatureSpace:
    """An extractor plus its reference set: unit (optionally centred) features and cosine similarities."""

    def __init__(self, extractor: FeatureExtractor, reference: Tensor, batch_size: int = 32) -> None:
        self.extractor = extractor
        self.batch_size = batch_size
        raw = self._raw(reference)
        self.centre: Tensor | None = None
        # Centring on one image would map it to zero; below two references the features stay raw.
        if extractor.centred is not None and len(raw) >= 2:
            self.centre = torch.zeros(raw.shape[1])
            self.centre[extractor.centred] = raw.mean(0)[extractor.centred]
        self.reference = self._finish(raw)

    def _raw(self, pixels: Tensor) -> Tensor:
        return torch.cat([self.extractor.embed(chunk) for chunk in pixels.split(self.batch_size)])

    def _finish(self, raw: Tensor) -> Tensor:
        if self.centre is not None:
            raw = raw - self.centre
        return raw / raw.norm(dim=1, keepdim=True).clamp(min=1e-8)

    def embed(self, pixels: Tensor) -> Tensor:
        return self._finish(self._raw(pixels))

    def paired(self, a: Tensor, b: Tensor) -> Tensor:
        """Similarity of a[i] to b[i] (pixels), one value per pair."""
        if len(a) != len(b):
            raise ValueError(f"paired similarity needs equal counts, got {len(a)} and {len(b)}")
        return (self.embed(a) * self.embed(b)).sum(1)

    def to_reference(self, pixels: Tensor) -> Tensor:
        """(N, R) similarities of each image to every reference image."""
        return self.embed(pixels) @ self.reference.T


def cosine_similarity(extractor: FeatureExtractor, a: Tensor, b: Tensor) -> Tensor:
    """Raw (uncentred) cosine of a[i] and b[i]: 1 for identical images."""
    fa, fb = extractor.embed(a), extractor.embed(b)
    return F.cosine_similarity(fa, fb, dim=1)
