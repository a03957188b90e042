"""Webdataset tars written with plain ``tarfile`` in the layout img2dataset writes (key.jpg + key.txt
or key.json per sample), for the unit and integration tests of ``source.kind: webdataset``."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (40, 32)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar of (name, data) members, in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def caption_json(text: str) -> bytes:
    return json.dumps({"caption": text, "url": "http://example.invalid/x.jpg", "key": "x"}).encode()


def shard_good() -> list[tuple[str, bytes]]:
    """00000.tar: three good samples (.txt, .json and nested-path keys)."""
    return [
        ("000000.jpg", jpeg_bytes(0)),
        ("000000.txt", b"a noisy photo\n"),
        ("000001.png", png_bytes((200, 10, 10))),
        ("000001.json", caption_json("a red square")),
        ("sub/000002.jpg", jpeg_bytes(2, (40, 56))),
        ("sub/000002.txt", b"a tall photo"),
    ]


def shard_with_bad_keys() -> list[tuple[str, bytes]]:
    """00001.tar: one good sample, one key with no image, one with no caption, one with a bad image."""
    return [
        ("000010.jpg", jpeg_bytes(10)),
        ("000010.txt", b"the good one"),
        ("000011.txt", b"a caption without an image"),
        ("000011.json", caption_json("still no image")),
        ("000012.png", png_bytes((1, 2, 3))),
        ("000013.jpg", b"\xff\xd8 this is not a jpeg"),
        ("000013.txt", b"a broken image"),
    ]


def shard_truncated() -> tuple[bytes, list[str]]:
    """00002.tar cut in the middle of its third sample's image: the bytes and the keys before the cut."""
    members = [
        ("000020.jpg", jpeg_bytes(20)),
        ("000020.txt", b"before the damage, one"),
        ("000021.png", png_bytes((10, 200, 10))),
        ("000021.txt", b"before the damage, two"),
        ("000022.jpg", jpeg_bytes(22, (64, 64))),
        ("000022.txt", b"never complete"),
    ]
    whole = tar_bytes(members)
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        third = tar.getmember("000022.jpg")
    return whole[: third.offset_data + 300], ["000020", "000021"]  # its header and 300 bytes of its data


def prepare_webdataset(source: str, dest: str, storage=None):
    """prepare_shards from the tars under ``source`` into ``dest``, in pixel space at 32 px."""
    from ambient.config import load_config
    from ambient.data import PrepareShardsConfig, prepare_shards

    cfg = load_config(
        PrepareShardsConfig,
        overrides=[
            "source.kind=webdataset",
            f"source.path={source}",
            f"destination.uri={dest}",
            "encode.space=image",  # pixel space: no VAE needed for what these tests check
            "resolution=32",
            "rows_per_shard=4",
        ],
    )
    return prepare_shards(cfg.model_copy(update={"storage": storage or cfg.storage}))
