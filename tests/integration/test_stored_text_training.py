"""encode.text_embeddings end to end on a local Ray cluster: shards that carry both text encoders' output
and the empty caption's, and a fine-tune on them whose workers load no text encoders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ambient.data.errors import ManifestError
from ambient.models.folders import resolve_export
from ambient.train import run_finetune
from tests.helpers.finetune import make_config, read_summary

pytestmark = pytest.mark.integration


def _prepare(model: str, uri: str, count: int, seed: int) -> str:
    from ambient.data.config import DestinationConfig, EncodeConfig, PrepareShardsConfig, SourceConfig
    from ambient.data.prepare import prepare_shards

    prepare_shards(
        PrepareShardsConfig(
            source=SourceConfig(count=count, seed=seed),
            destination=DestinationConfig(uri=uri),
            encode=EncodeConfig(model=model, text_embeddings=True, micro_batch=3),
            rows_per_shard=16,
        )
    )
    return uri


@pytest.fixture(scope="module")
def text_shards(tiny_model, ray_session, tmp_path_factory) -> str:
    return _prepare(tiny_model, str(tmp_path_factory.mktemp("text-shards") / "train"), 32, seed=0)


@pytest.fixture(scope="module")
def text_holdout(tiny_model, ray_session, tmp_path_factory) -> str:
    return _prepare(tiny_model, str(tmp_path_factory.mktemp("text-shards") / "holdout"), 8, seed=1)


def test_prepared_rows_carry_the_text_encoders_output(tiny_model, text_shards):
    from ambient.data.encode import embed_texts
    from ambient.data.streaming import inspect_dataset
    from ambient.data.text import read_empty_caption

    info = inspect_dataset(text_shards)  # validates the text columns and the empty-caption file
    text = info.manifest.text_embeddings
    assert text is not None and (text.sequence_length, text.prompt_dim, text.pooled_dim) == (77, 64, 32)
    assert (Path(text_shards) / text.empty_caption_file).is_file()
    table = pq.read_table(Path(text_shards) / info.files[0])
    captions = [str(c) for c in table.column("caption").to_pylist()[:4]]
    stored = table.column("prompt_embeds").combine_chunks().to_numpy_ndarray()[:4]
    pooled = table.column("pooled_prompt_embeds").combine_chunks().to_numpy_ndarray()[:4]
    assert stored.dtype == np.float16 and stored.shape == (4, 77, 64) and pooled.shape == (4, 32)
    want, want_pooled = embed_texts(tiny_model, None, captions)
    # Batch composition changes float32 rounding before the float16 cast: equal within one float16 step.
    np.testing.assert_allclose(stored.astype(np.float32), want.astype(np.float32), rtol=2**-10, atol=1e-4)
    np.testing.assert_allclose(
        pooled.astype(np.float32), want_pooled.astype(np.float32), rtol=2**-10, atol=1e-4
    )
    empty, empty_pooled = read_empty_caption(text_shards, info.manifest)
    want_empty, want_empty_pooled = embed_texts(tiny_model, None, [""])
    np.testing.assert_allclose(
        empty.astype(np.float32), want_empty[0].astype(np.float32), rtol=2**-10, atol=1e-4
    )
    np.testing.assert_allclose(
        empty_pooled.astype(np.float32), want_empty_pooled[0].astype(np.float32), rtol=2**-10, atol=1e-4
    )


def test_a_run_on_stored_embeddings_trains_validates_and_samples(
    tmp_path, tiny_model, text_shards, text_holdout, capsys
):
    cfg = make_config(
        tmp_path,
        tiny_model,
        text_shards,
        "stored-text",
        **{"train.max_steps": 4, "train.checkpoint_every": 4, "validation.every_steps": 4},
        **{"data.caption_dropout": 0.5, "validation.data_uri": text_holdout, "validation.rows": 8},
    )
    s = read_summary(run_finetune(cfg))
    assert "stored embeddings (the workers load no text encoders)" in capsys.readouterr().out
    assert s["steps"] == 4 and all(np.isfinite(h["loss"]) for h in s["history"])
    assert s["final_val_ambient_loss"] is not None and np.isfinite(s["final_val_ambient_loss"])
    assert Path(s["sample_grids"], "step_000004.png").is_file()
    meta = json.loads(Path(resolve_export(s["exported_model"]), "ambient_metadata.json").read_text())
    assert meta["steps"] == 4


def test_a_held_out_set_without_embeddings_is_refused_before_training(
    tmp_path, tiny_model, text_shards, demo_shards
):
    cfg = make_config(tmp_path, tiny_model, text_shards, "refused", **{"validation.data_uri": demo_shards})
    with pytest.raises(ManifestError, match="validation.data_uri .* carries no text embeddings"):
        run_finetune(cfg)
