"""Precomputed text embeddings (encode.text_embeddings) on the tiny model, without Ray: training on the
stored float16 embeddings gives the loss the live text encoders give, and sampling from embeddings
gives the images sampling from prompts gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ambient.config import load_config
from ambient.core import sdxl_alphas_cumprod, ve_sigmas
from ambient.data import collate_batch
from ambient.data.encode import embed_captions, load_text_model
from ambient.data.schema import make_table
from ambient.models.conditioning import TextEmbeddings, drop_mask
from ambient.models.denoiser import SDXLDenoiser
from ambient.models.loading import SDXLComponents, load_components
from ambient.models.sampling import sample_latents
from ambient.models.tiny import build_tiny_pipeline
from ambient.train.batch import model_inputs
from ambient.train.config import FinetuneConfig
from ambient.train.objective import training_loss

CAPTIONS = [
    "a red circle on a blue background",
    "a green square on a white background",
    "a yellow triangle on a black background",
    "a purple ring on an orange background",
    "a blue cross on a green background",
    "a white star on a red background",
    "an orange square on a purple background",
    "a black circle on a yellow background",
]
DROPOUT, SEED = 0.5, 3
# float16 keeps 11 significant bits: each stored value is the live one within a relative 2^-11 (4.9e-4),
# which the test checks element by element. The loss is smooth in the embeddings, and on the tiny model
# even a whole different caption per row moves it by only ~3e-5 (relative), so rounding at 2^-11 of that
# scale moves it by about 1e-8, below float32's own noise (~1e-7). 1e-5 relative admits both and still
# rejects rows paired with the wrong embeddings (checked below).
LOSS_RTOL = 1e-5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "tiny"
    build_tiny_pipeline(seed=0).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def comps(model_dir) -> SDXLComponents:
    return load_components(model_dir)


@pytest.fixture(scope="module")
def no_text(model_dir) -> SDXLComponents:
    return load_components(model_dir, text_encoders=False)


@pytest.fixture(scope="module")
def stored(model_dir) -> dict:
    """Embeddings made as prepare_shards makes them: the same function, float16, micro-batches of 4."""
    text = load_text_model(str(model_dir))
    prompts, pooled = embed_captions(text, CAPTIONS, micro_batch=4)
    empty = embed_captions(text, [""], micro_batch=4)
    return {"prompts": prompts, "pooled": pooled, "empty": empty}


def _shard_batch(tmp_path: Path, comps: SDXLComponents, stored: dict | None) -> dict:
    """The rows written to a shard, read back and collated as training reads them."""
    n, f = len(CAPTIONS), comps.vae_scale_factor
    latents = torch.randn((n, 4, 64 // f, 64 // f), generator=torch.Generator().manual_seed(1)).numpy()
    table = make_table(
        "latent",
        [f"row-{i}" for i in range(n)],
        latents,
        np.array([0.0, 0.3, 0.5, 1.0] * 2),
        CAPTIONS,
        np.array([[64, 64]] * n),
        np.array([[0, 0]] * n),
        noise_seed=0,
        prompt_embeds=stored["prompts"] if stored else None,
        pooled_prompt_embeds=stored["pooled"] if stored else None,
    )
    path = tmp_path / ("text.parquet" if stored else "plain.parquet")
    pq.write_table(table, path)
    back = pq.read_table(path)
    return collate_batch(
        {c: back.column(c).combine_chunks().to_numpy(zero_copy_only=False) for c in back.column_names}
    )


def _loss(comps: SDXLComponents, batch: dict, empty: TextEmbeddings | None) -> tuple[float, dict]:
    cfg = load_config(FinetuneConfig, None, ["consistency.every=1", "consistency.fraction=1"])
    gen = torch.Generator().manual_seed(SEED)
    inputs = model_inputs(
        batch,
        comps,
        caption_dropout=DROPOUT,
        sigma_train=None,
        noise_seed=0,
        vae_scale_factor=comps.vae_scale_factor,
        generator=gen,
        device=torch.device("cpu"),
        empty_caption=empty,
    )
    denoiser = SDXLDenoiser(comps.unet, comps.alphas_cumprod, comps.scheduler.config.prediction_type)
    table = ve_sigmas(sdxl_alphas_cumprod()).float()
    torch.manual_seed(0)
    with torch.no_grad():
        parts = training_loss(denoiser, inputs, cfg, 0, table, gen)
    return parts.total.item(), inputs.cond


def test_the_loss_on_stored_float16_embeddings_equals_the_live_encoders_loss(
    tmp_path, comps, no_text, stored
):
    dropped = drop_mask(len(CAPTIONS), DROPOUT, torch.Generator().manual_seed(SEED))
    assert 0 < int(dropped.sum()) < len(CAPTIONS)  # the draw drops some rows and keeps others

    live, live_cond = _loss(comps, _shard_batch(tmp_path, comps, None), None)
    empty = TextEmbeddings(*(torch.from_numpy(a) for a in stored["empty"]))
    batch = _shard_batch(tmp_path, comps, stored)
    assert batch["prompt_embeds"].dtype == torch.float16
    got, cond = _loss(no_text, batch, empty)  # no text encoders loaded: only the stored embeddings

    # The conditioning is the live one up to float16 rounding, dropped rows included (the empty caption's).
    for key in ("encoder_hidden_states", "text_embeds"):
        bound = live_cond[key].abs() * 2**-11 + 1e-6
        assert ((cond[key] - live_cond[key]).abs() <= bound).all(), key
    assert torch.equal(cond["time_ids"], live_cond["time_ids"])
    difference = abs(got - live)
    print(f"live loss {live:.8f}, stored loss {got:.8f}, |difference| {difference:.3e}")
    assert difference <= LOSS_RTOL * abs(live)

    # The test can tell: rows paired with another row's embeddings move the loss beyond the tolerance.
    other = {**batch, "prompt_embeds": batch["prompt_embeds"].roll(1, 0)}
    moved = abs(_loss(no_text, other, empty)[0] - live)
    assert moved > LOSS_RTOL * abs(live) and moved > 100 * difference


def test_a_batch_with_stored_embeddings_needs_the_empty_caption(tmp_path, no_text, stored):
    with pytest.raises(ValueError, match="empty-caption"):
        _loss(no_text, _shard_batch(tmp_path, no_text, stored), None)


def test_without_text_encoders_captions_cannot_be_encoded(tmp_path, no_text):
    assert no_text.text_encoder is None and no_text.tokenizer_2 is None
    with pytest.raises(ValueError, match="no text encoders loaded"):
        _loss(no_text, _shard_batch(tmp_path, no_text, None), None)


def test_sampling_from_embeddings_equals_sampling_from_prompts(comps, no_text):
    prompts = CAPTIONS[:3]
    live = comps.text_encoders(prompts)
    empty = comps.text_encoders([""])
    settings = {"num_steps": 2, "height": 64, "width": 64, "micro_batch": 2, "seed": 5}
    from_prompts = sample_latents(comps, prompts, **settings)
    from_embeddings = sample_latents(
        no_text,
        None,
        embeddings=TextEmbeddings(*live),
        negative_embeddings=TextEmbeddings(*empty),
        **settings,
    )
    torch.testing.assert_close(from_embeddings, from_prompts, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="exactly one of prompts or embeddings"):
        sample_latents(no_text, prompts, embeddings=TextEmbeddings(*live), **settings)
    with pytest.raises(ValueError, match="no text encoders loaded"):
        sample_latents(no_text, prompts, **settings)
