"""Webdataset tar reading (no Ray): keys, captions from .txt/.json, rejected samples, damaged tars."""

from __future__ import annotations

import io

import pytest

from ambient.data.webdataset import read_tar_samples, split_member
from tests.helpers.webdataset_tars import (
    prepare_webdataset,
    shard_good,
    shard_truncated,
    shard_with_bad_keys,
    tar_bytes,
)


def rows_of(data: bytes, name: str = "00000.tar") -> dict[str, dict]:
    return {r["id"]: r for r in read_tar_samples(io.BytesIO(data), name)}


def test_split_member_takes_the_key_up_to_the_first_dot_of_the_file_name():
    assert split_member("000001.jpg") == ("000001", "jpg")
    assert split_member("sub/dir/a.b.JSON") == ("sub/dir/a", "b.json")
    assert split_member("./x.txt") == ("x", "txt")


def test_samples_get_tar_and_key_ids_and_captions_from_txt_or_json():
    rows = rows_of(tar_bytes(shard_good()))
    assert list(rows) == ["00000.tar/000000", "00000.tar/000001", "00000.tar/sub/000002"]
    assert [r["caption"] for r in rows.values()] == ["a noisy photo", "a red square", "a tall photo"]
    assert all(r["reject"] == "" and r["image"][:2] in (b"\xff\xd8", b"\x89P") for r in rows.values())


def test_a_key_without_image_or_caption_is_rejected_with_a_reason():
    rows = rows_of(tar_bytes(shard_with_bad_keys()), "00001.tar")
    assert rows["00001.tar/000010"]["reject"] == ""
    assert rows["00001.tar/000011"]["reject"] == "no image in sample: found .json, .txt"
    assert rows["00001.tar/000012"]["reject"] == "missing caption"
    assert rows["00001.tar/000013"]["reject"] == ""  # undecodable bytes are rejected when decoded


def test_a_truncated_tar_keeps_the_samples_before_the_damage():
    data, kept = shard_truncated()
    rows = rows_of(data, "00002.tar")
    assert [rows[f"00002.tar/{k}"]["reject"] for k in kept] == ["", ""]
    damaged = rows["00002.tar/000022"]["reject"]
    assert damaged.startswith("damaged tar: ") and len(rows) == 3


def test_a_file_that_is_no_tar_is_one_rejected_row_naming_it():
    rows = list(read_tar_samples(io.BytesIO(b"not a tar at all" * 100), "junk.tar"))
    assert len(rows) == 1 and rows[0]["id"] == "junk.tar/" and rows[0]["reject"].startswith("damaged tar")


def test_a_bad_json_caption_is_rejected_with_its_reason():
    rows = rows_of(tar_bytes([("k.jpg", b"\xff\xd8x"), ("k.json", b"{not json")]))
    assert rows["00000.tar/k"]["reject"].startswith("bad .json caption")


def test_an_empty_prefix_fails_before_any_work(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"source\.path .*empty holds no \.tar files"):
        prepare_webdataset(str(tmp_path / "empty"), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "manifest.json").exists()
