"""The training items an audit attacks: the *clean* originals with their captions.

A model can only be shown to reproduce what the auditor holds. Three sources: the built-in synthetic
dataset (re-rendered by seed and index), a shard dataset (synthetic-sourced shards are re-rendered from
their manifest's seed and the row ids; clean latent shards are used as they are) or a folder of the
original images with captions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ambient.data.preprocess import decode_image, resize_and_crop
from ambient.storage import StorageConfig
from ambient.synthetic import render_from_id, render_synthetic

from .config import ItemsSection


@dataclass
class AuditItems:
    """Originals as pixels (B, 3, H, W) in [-1, 1], or as clean diffusion-space latents (B, C, h, w)."""

    ids: list[str]
    captions: list[str]
    pixels: Tensor | None = None
    latents: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.pixels is None) == (self.latents is None):
            raise ValueError("AuditItems needs exactly one of pixels or latents")
        n = len(self.pixels if self.pixels is not None else self.latents)
        if not (len(self.ids) == len(self.captions) == n) or n == 0:
            raise ValueError(f"AuditItems: {len(self.ids)} ids, {len(self.captions)} captions, {n} images")

    def __len__(self) -> int:
        return len(self.ids)


def _pixels(images: list[Image.Image], resolution: int) -> Tensor:
    # The same resize and centre crop as prepare_shards, so originals match what was encoded.
    return torch.from_numpy(np.stack([resize_and_crop(im, resolution)[0] for im in images]))


def synthetic(count: int, seed: int, resolution: int, start: int = 0) -> AuditItems:
    items = [render_synthetic(start + i, seed, resolution) for i in range(count)]
    return AuditItems(
        ids=[it.id for it in items],
        captions=[it.caption for it in items],
        pixels=_pixels([it.image for it in items], resolution),
    )


def from_folder(root: str | Path, count: int, resolution: int) -> AuditItems:
    from ambient.data.sources import folder_items

    listed = [it for it in folder_items(Path(root)) if not it["reject"]][:count]
    if not listed:
        raise ValueError(f"items.path: {root} holds no image with a caption")
    images = []
    for it in listed:
        try:
            images.append(decode_image(Path(it["path"]).read_bytes()))
        except OSError as err:
            raise ValueError(f"items.path: cannot read image {it['path']}: {err}") from None
        except Exception as err:  # PIL raises several types for a corrupt file
            raise ValueError(f"items.path: {it['path']} is not a readable image ({err})") from None
    return AuditItems(
        ids=[it["id"] for it in listed],
        captions=[it["caption"] for it in listed],
        pixels=_pixels(images, resolution),
    )


def from_dataset(
    uri: str, count: int, resolution: int | None, storage: StorageConfig | None = None
) -> AuditItems:
    """Items of a training shard dataset. Noisy latents are not originals: those datasets are refused
    unless their source can be re-rendered (the synthetic demo)."""
    from ambient.data.holdout import read_rows
    from ambient.data.validate import load_manifest

    manifest = load_manifest(uri, storage)
    rows = read_rows(uri, storage, limit=count)
    source = manifest.source or {}
    if source.get("kind") == "synthetic":
        seed = int(source.get("seed", 0))
        size = int(source.get("image_size") or manifest.resolution)
        images, captions = [], []
        for row_id in rows["ids"]:
            try:
                item = render_from_id(row_id, size)
            except ValueError:
                item = None
            if item is None or f"-{seed}-" not in row_id:
                raise ValueError(
                    f"items.path: row id {row_id!r} of {uri} is not a synthetic id of seed {seed}"
                )
            images.append(item.image)
            captions.append(item.caption)
        if captions != list(rows["captions"]):
            raise ValueError(f"items.path: re-rendered captions differ from the shards of {uri}")
        return AuditItems(
            ids=list(rows["ids"]),
            captions=captions,
            pixels=_pixels(images, resolution or manifest.resolution),
        )
    if manifest.space != "latent":
        return AuditItems(ids=list(rows["ids"]), captions=list(rows["captions"]), pixels=rows["image"])
    if float(rows["sigma_n"].max()) > 0:
        raise ValueError(
            f"items.path: {uri} holds noisy latents (sigma_n up to {float(rows['sigma_n'].max()):.3g}); the "
            "audit needs the originals: give the image folder (items.kind=folder) or clean shards (sigma_n=0)"
        )
    return AuditItems(ids=list(rows["ids"]), captions=list(rows["captions"]), latents=rows["latent"])


def load_items(cfg: ItemsSection, default_resolution: int) -> AuditItems:
    resolution = cfg.resolution or default_resolution
    if cfg.kind == "synthetic":
        return synthetic(cfg.count, cfg.seed, resolution, cfg.start)
    if cfg.kind == "folder":
        return from_folder(str(cfg.path), cfg.count, resolution)
    return from_dataset(str(cfg.path), cfg.count, cfg.resolution)
