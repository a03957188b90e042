"""SDXL's real architecture builds on the meta device with the published sizes and conditioning."""

from __future__ import annotations

import pytest

from ambient.models.lora import add_lora
from ambient.models.real_size import PUBLISHED_PARAMETERS, build_real_size, lora_target_count


@pytest.fixture(scope="module")
def model():
    return build_real_size("meta")


def test_nothing_is_allocated(model):
    for name in PUBLISHED_PARAMETERS:
        assert {p.device.type for p in getattr(model, name).parameters()} == {"meta"}, name


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_parameter_counts_match_the_published_ones(model, name):
    counted = model.parameter_counts()[name]
    assert abs(counted / PUBLISHED_PARAMETERS[name] - 1) < 0.01, (name, counted)


def test_unet_takes_sdxl_conditioning(model):
    cfg = model.unet.config
    assert cfg.addition_embed_type == "text_time"
    # 1280 pooled (text_encoder_2's projection) + 6 time ids x 256
    assert cfg.projection_class_embeddings_input_dim == 2816
    assert cfg.projection_class_embeddings_input_dim == (
        model.text_encoder_2.config.projection_dim + 6 * cfg.addition_time_embed_dim
    )
    # cross attention reads both encoders' hidden states, concatenated
    assert (
        cfg.cross_attention_dim
        == model.text_encoder.config.hidden_size + model.text_encoder_2.config.hidden_size
    )
    assert 2 ** (len(model.vae.config.block_out_channels) - 1) == 8


def test_lora_targets_every_attention_projection(model):
    # 70 transformer blocks (down 2x2 + 2x10, mid 10, up 3x10 + 3x2) x 2 attentions x 4 projections
    assert lora_target_count(model.unet) == 560
    unet = build_real_size("meta").unet
    add_lora(unet, rank=4)
    adapted = [n for n, _ in unet.named_modules() if n.endswith("lora_A.default")]
    assert len(adapted) == 560
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    assert 0 < trainable < 0.01 * PUBLISHED_PARAMETERS["unet"]
    assert all(p.device.type == "meta" for p in unet.parameters())
