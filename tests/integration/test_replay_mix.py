"""Rehearsal data: a synthetic dataset with a share of another world mixed in (``source.replay_world``),
and the showcase's row reader leaving those rows out of the new concept."""

from __future__ import annotations

import pytest

from ambient.config import load_config
from ambient.data import PrepareShardsConfig, open_dataset, prepare_shards
from ambient.data.holdout import read_rows, row_ids
from ambient.synthetic import has_partial_caption, partial_caption, render_synthetic, world_of_id

pytestmark = pytest.mark.integration


def _prepare_16px(uri: str, *source_overrides: str) -> dict[str, str]:
    """Prepare a small synthetic image-space dataset at ``uri``; its captions by row id."""
    overrides = [f"destination.uri={uri}", "encode.space=image", "resolution=16", *source_overrides]
    prepare_shards(load_config(PrepareShardsConfig, overrides=overrides))
    ds, _ = open_dataset(uri, None)
    return {r["id"]: r["caption"] for r in ds.take_all()}


def test_a_quarter_of_the_rows_come_from_the_replay_world(ray_session, tmp_path):
    uri = str(tmp_path / "mixed")
    rows = _prepare_16px(
        uri, "source.count=8", "source.world=cross", "source.replay_world=base", "source.replay_share=0.25"
    )
    assert sorted(row_ids(uri, None)) == sorted(rows)
    replayed = {render_synthetic(i, 0, 16, "base").id for i in (3, 7)}
    assert {i for i in rows if world_of_id(i) == "base"} == replayed
    assert {i for i in rows if world_of_id(i) == "cross"} == {
        render_synthetic(i, 0, 16, "cross").id for i in (0, 1, 2, 4, 5, 6)
    }
    assert all(("cross" in c) == (world_of_id(i) == "cross") for i, c in rows.items())
    # Sorted by id the base rows come first; the showcase keeps only the new concept's.
    assert all(world_of_id(i) == "base" for i in read_rows(uri, None, limit=2)["ids"])
    kept = read_rows(uri, None, limit=8, keep=lambda i: world_of_id(i) != "base")
    assert len(kept["ids"]) == 6 and all("cross" in c for c in kept["captions"])


def test_partial_captions_name_some_attributes_of_the_same_images(ray_session, tmp_path):
    rows = _prepare_16px(
        str(tmp_path / "partial"), "source.count=16", "source.world=base", "source.partial_captions=0.5"
    )
    items = [render_synthetic(i, 0, 16, "base") for i in range(16)]
    assert sorted(rows) == sorted(it.id for it in items)  # the same images, only some captions differ
    partial = [i for i in range(16) if has_partial_caption(0, i, 0.5)]
    assert 0 < len(partial) < 16
    for i, it in enumerate(items):
        expected = partial_caption(it, 0, i) if i in partial else it.caption
        assert rows[it.id] == expected
