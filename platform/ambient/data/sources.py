"""Input sources as Ray Datasets of raw rows: ``id``, ``caption``, ``image`` (encoded bytes), ``reject``.

``reject`` is empty for a usable row and otherwise says why the row cannot be used; rejected rows
travel down the pipeline (cheaply) so that the final summary can count them with their reasons.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray.data

from ambient.storage import StorageConfig, join, list_files, resolve_filesystem, storage_error
from ambient.synthetic import has_partial_caption, is_replay, partial_caption, render_synthetic

from .config import SourceConfig
from .webdataset import webdataset_source

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CAPTIONS_JSONL = "captions.jsonl"


def source_dataset(cfg: SourceConfig, resolution: int, storage: StorageConfig | None) -> ray.data.Dataset:
    if cfg.kind == "synthetic":
        size = cfg.image_size or resolution
        return synthetic_source(
            cfg.count, cfg.seed, size, cfg.world, cfg.replay_world, cfg.replay_share, cfg.partial_captions
        )
    if cfg.kind == "folder":
        return folder_source(Path(str(cfg.path)))
    if cfg.kind == "webdataset":
        return webdataset_source(str(cfg.path), storage)
    return parquet_source(cfg, storage)


def synthetic_source(
    count: int,
    seed: int,
    size: int,
    world: str = "shapes",
    replay_world: str | None = None,
    replay_share: float = 0.0,
    partial_captions: float = 0.0,
) -> ray.data.Dataset:
    """Items 0 .. count-1 of ``world``; with a replay world, a share of them (evenly spaced) from that
    world instead (their ids name it, so they re-render and stay distinct); with ``partial_captions``, a
    share of the captions name only some of the item's attributes (the image and id are the same)."""

    def world_of(index: int) -> str:
        return replay_world if replay_world and is_replay(index, replay_share) else world

    def render(batch: dict[str, np.ndarray]) -> dict[str, list]:
        indices = [int(i) for i in batch["id"]]
        items = [render_synthetic(i, seed, size, world_of(i)) for i in indices]
        captions = [
            partial_caption(it, seed, i) if has_partial_caption(seed, i, partial_captions) else it.caption
            for it, i in zip(items, indices, strict=True)
        ]
        return {
            "id": [it.id for it in items],
            "caption": captions,
            "image": [_png(it.image) for it in items],
            "reject": [""] * len(items),
        }

    return ray.data.range(count).map_batches(render, batch_size=64)


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def folder_items(root: Path) -> list[dict]:
    """One item per image file under ``root``: its caption from ``captions.jsonl`` or ``<stem>.txt``.

    Runs on the driver (listing only); the bytes are read by the workers."""
    if not root.is_dir():
        raise FileNotFoundError(f"source.path {root} is not a folder")
    captions: dict[str, str] = {}
    jsonl = root / CAPTIONS_JSONL
    if jsonl.is_file():
        for n, line in enumerate(jsonl.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                name = rec.get("file") or rec.get("file_name") or rec.get("image")
                captions[str(name)] = str(rec.get("caption") if "caption" in rec else rec["text"])
            except (json.JSONDecodeError, KeyError, AttributeError):
                raise ValueError(f"{jsonl}:{n}: expected {{'file': ..., 'caption': ...}}") from None
    items = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        rel = path.relative_to(root).as_posix()
        caption, reject = captions.get(rel), ""
        txt = path.with_suffix(".txt")
        if caption is None and txt.is_file():
            caption = txt.read_text().strip()
        if not caption:
            reject = "missing caption"
        items.append({"id": rel, "path": str(path), "caption": caption or "", "reject": reject})
    if not items:
        raise FileNotFoundError(f"source.path {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return items


def folder_source(root: Path) -> ray.data.Dataset:
    def read(batch: dict[str, np.ndarray]) -> dict[str, list]:
        images, rejects = [], []
        for path, reject in zip(batch["path"], batch["reject"], strict=True):
            data = b""
            if not reject:
                try:
                    data = Path(path).read_bytes()
                except OSError as exc:
                    reject = f"unreadable file: {exc.strerror or exc}"
            images.append(data)
            rejects.append(reject)
        return {
            "id": list(batch["id"]),
            "caption": list(batch["caption"]),
            "image": images,
            "reject": rejects,
        }

    return ray.data.from_items(folder_items(root)).map_batches(read, batch_size=64)


def parquet_files(cfg: SourceConfig, storage: StorageConfig | None) -> list[str]:
    """The source's Parquet files, after checking that the configured columns exist (on the driver,
    before any cluster work: a wrong column name or an empty prefix fails here, naming the field)."""
    path = str(cfg.path)
    fs, root = resolve_filesystem(path, storage)
    try:
        single = fs.get_file_info(root).type == pafs.FileType.File
    except OSError as exc:
        raise storage_error(path, "access", exc, storage) from None
    files = [path] if single else [join(path, f) for f in list_files(path, storage, suffix=".parquet")]
    if not files:
        raise FileNotFoundError(f"source.path {path} holds no .parquet files")
    fs, first = resolve_filesystem(files[0], storage)
    try:
        schema = pq.read_schema(first, filesystem=fs)
    except OSError as exc:
        raise storage_error(files[0], "read the schema of", exc, storage) from None
    for field in ("image_column", "caption_column", "id_column"):
        name = getattr(cfg, field)
        if name is not None and name not in schema.names:
            raise ValueError(
                f"source.{field}: {files[0]} has no column {name!r} (its columns: {', '.join(schema.names)})"
            )
    image = schema.field(cfg.image_column).type
    is_bytes = pa.types.is_binary(image) or pa.types.is_large_binary(image)
    if not (is_bytes or (pa.types.is_struct(image) and image.get_field_index("bytes") >= 0)):
        raise ValueError(
            f"source.image_column: column {cfg.image_column!r} is {image}; expected encoded image bytes "
            "(binary, or a struct with a `bytes` field)"
        )
    return files


def parquet_source(cfg: SourceConfig, storage: StorageConfig | None) -> ray.data.Dataset:
    files = parquet_files(cfg, storage)
    image_col, caption_col, id_col = cfg.image_column, cfg.caption_column, cfg.id_column
    columns = [image_col, caption_col] + ([id_col] if id_col else [])

    def normalize(batch: dict[str, np.ndarray]) -> dict[str, list]:
        ids, captions, images, rejects = [], [], [], []
        for i, (raw, caption) in enumerate(zip(batch[image_col], batch[caption_col], strict=True)):
            data = raw.get("bytes") if isinstance(raw, dict) else raw
            data = bytes(data) if data is not None else b""
            reject = "" if data else "missing image bytes"
            if not caption:
                reject = reject or "missing caption"
            if id_col:  # a missing id must not become the id "None" (shared by every such row)
                raw_id = batch[id_col][i]
                row_id = "" if raw_id is None else str(raw_id)
                reject = reject or ("" if row_id else "missing id")
            else:  # content hash: stable across runs and file layouts
                row_id = "sha-" + hashlib.blake2b(data, digest_size=10).hexdigest()
            ids.append(row_id)
            captions.append(str(caption or ""))
            images.append(data)
            rejects.append(reject)
        return {"id": ids, "caption": captions, "image": images, "reject": rejects}

    fs, _ = resolve_filesystem(files[0], storage)
    paths = [resolve_filesystem(f, storage)[1] for f in files]
    ds = ray.data.read_parquet(paths, filesystem=fs).select_columns(columns)
    return ds.map_batches(normalize, batch_size=64)
