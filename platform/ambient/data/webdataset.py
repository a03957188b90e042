"""Webdataset tar shards as a source: one sample per key, streamed tar by tar (never downloaded whole).

A webdataset tar (what img2dataset writes) holds each sample as consecutive members that share a key:
``00001.jpg`` + ``00001.txt`` (or ``00001.json`` with a ``caption``/``text`` field). The key is the
member's path up to the first dot of its file name. Each tar is read as a stream (``tarfile`` mode
``'r|'`` over pyarrow's input stream), locally or from S3, so memory holds one sample at a time.

Row ids are ``<tar path relative to source.path>/<key>``. A sample without an image or a caption is a
rejected row with its reason. A damaged (truncated) tar keeps the samples read before the damage; the
sample in progress when the damage was hit is rejected (``damaged tar: ...``), and a tar that cannot be
read at all is one rejected row ``<tar>/`` naming the error.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pyarrow.fs as pafs
import ray.data

from ambient.storage import StorageConfig, join, list_files, resolve_filesystem, storage_error

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
CAPTION_EXTENSIONS = ("txt", "json")
ROWS_PER_BATCH = 64


@dataclass
class Sample:
    """The members of one key, as read so far (extension -> bytes)."""

    key: str
    parts: dict[str, bytes] = field(default_factory=dict)


def split_member(name: str) -> tuple[str, str]:
    """``dir/abc.seg.jpg`` -> (``dir/abc``, ``seg.jpg``): webdataset's key and extension."""
    path = PurePosixPath(name)
    stem, _, ext = path.name.partition(".")
    key = str(path.parent / stem) if str(path.parent) not in ("", ".") else stem
    return key, ext.lower()


def caption_of(parts: dict[str, bytes]) -> tuple[str, str]:
    """(caption, reject reason) from a ``.txt`` member or a ``.json`` member's caption/text field."""
    if "txt" in parts:
        return parts["txt"].decode("utf-8", errors="replace").strip(), ""
    if "json" in parts:
        try:
            meta = json.loads(parts["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return "", f"bad .json caption: {exc}"
        text = meta.get("caption", meta.get("text")) if isinstance(meta, dict) else None
        return (str(text).strip() if text else ""), ""
    return "", ""


def sample_row(tar_name: str, sample: Sample, damage: str = "") -> dict:
    """One raw row (``id``, ``caption``, ``image``, ``reject``) from a sample's members."""
    image = next((sample.parts[e] for e in IMAGE_EXTENSIONS if e in sample.parts), b"")
    caption, reject = caption_of(sample.parts)
    if damage:
        reject = f"damaged tar: {damage}"
    elif not image:
        found = ", ".join(f".{e}" for e in sorted(sample.parts)) or "nothing"
        reject = f"no image in sample: found {found}"
    elif not reject and not caption:
        reject = "missing caption"
    return {"id": f"{tar_name}/{sample.key}", "caption": caption, "image": image, "reject": reject}


def read_tar_samples(stream, tar_name: str) -> Iterator[dict]:
    """Rows of one tar read as a stream; damage ends the tar with a rejected row (see the module doc)."""
    sample: Sample | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = split_member(member.name)
                if sample is not None and key != sample.key:
                    yield sample_row(tar_name, sample)
                    sample = None
                sample = sample or Sample(key)
                data = tar.extractfile(member).read()
                if ext in IMAGE_EXTENSIONS or ext in CAPTION_EXTENSIONS:
                    sample.parts[ext] = data
                else:
                    sample.parts.setdefault(ext, b"")  # noted (for the reject reason), not kept
    except (tarfile.TarError, EOFError, OSError) as exc:
        yield sample_row(tar_name, sample or Sample(""), damage=str(exc) or type(exc).__name__)
        return
    if sample is not None:
        yield sample_row(tar_name, sample)


def webdataset_files(path: str, storage: StorageConfig | None) -> list[str]:
    """The ``.tar`` files of ``source.path`` (one file, or every ``*.tar`` under a prefix), checked on the
    driver before any cluster work."""
    fs, root = resolve_filesystem(path, storage)
    try:
        single = fs.get_file_info(root).type == pafs.FileType.File
    except OSError as exc:
        raise storage_error(path, "access", exc, storage) from None
    if single:
        return [path]
    files = [join(path, f) for f in list_files(path, storage, suffix=".tar")]
    if not files:
        raise FileNotFoundError(f"source.path {path} holds no .tar files")
    return files


def _tar_name(uri: str, source_path: str) -> str:
    """The tar's path relative to ``source.path`` (its file name when source.path is the tar)."""
    base = source_path.rstrip("/") + "/"
    return uri[len(base) :] if uri.startswith(base) else PurePosixPath(uri).name


def _read_tar(uri: str, tar_name: str, storage: StorageConfig | None) -> Iterator[dict]:
    fs, path = resolve_filesystem(uri, storage)
    try:
        stream = fs.open_input_stream(path)
    except OSError as exc:
        yield {"id": f"{tar_name}/", "caption": "", "image": b"", "reject": f"unreadable tar: {exc}"}
        return
    with stream:
        yield from read_tar_samples(stream, tar_name)


def _batches(rows: Iterator[dict]) -> Iterator[dict[str, list]]:
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == ROWS_PER_BATCH:
            yield _columns(batch)
            batch = []
    if batch:
        yield _columns(batch)


def _columns(rows: list[dict]) -> dict[str, list]:
    return {name: [r[name] for r in rows] for name in ("id", "caption", "image", "reject")}


def webdataset_source(path: str, storage: StorageConfig | None) -> ray.data.Dataset:
    """One read task per tar (batch_size=1), each yielding its samples in batches as it streams."""
    files = webdataset_files(path, storage)
    items = [{"uri": f, "tar": _tar_name(f, path)} for f in files]

    def read(batch: dict) -> Iterator[dict[str, list]]:
        for uri, tar_name in zip(batch["uri"], batch["tar"], strict=True):
            yield from _batches(_read_tar(str(uri), str(tar_name), storage))

    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(read, batch_size=1)
