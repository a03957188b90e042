"""ambient.models on the tiny offline SDXL pipeline: each piece checked against diffusers' own code path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from ambient.core import sdxl_alphas_cumprod
from ambient.models import (
    SDXLComponents,
    SDXLDenoiser,
    add_lora,
    build_tiny_pipeline,
    check_model_dir,
    decode_latents,
    drop_captions,
    encode_images,
    encode_prompts,
    ensure_untrained_model,
    export_pipeline,
    guided,
    has_lora,
    image_grid,
    load_components,
    load_pipeline,
    lora_state_dict,
    make_add_time_ids,
    merge_lora,
    parameter_counts,
    pil_to_tensor,
    read_metadata,
    sample_images,
    sample_latents,
    tensor_to_pil,
)
from ambient.models.export import export_adapter
from ambient.synthetic import COLORS, SHAPES, synthetic_items
from ambient.threads import default_threads


@pytest.fixture(scope="module", autouse=True)
def _threads():
    # On a shared 2-core machine, two OpenMP threads spinning against other processes run ~10x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(default_threads())
    yield
    torch.set_num_threads(previous)


CAPTIONS = ["a red circle on a blue background", "a green ring on a white background", ""]


@pytest.fixture(scope="module")
def pipe() -> StableDiffusionXLPipeline:
    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def base_dir(pipe, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "tiny"
    pipe.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def comps(base_dir) -> SDXLComponents:
    return load_components(base_dir)


def _cond(
    comps: SDXLComponents, captions: list[str], hw: tuple[int, int] = (64, 64)
) -> dict[str, torch.Tensor]:
    embeds, pooled = encode_prompts(
        [comps.tokenizer, comps.tokenizer_2], [comps.text_encoder, comps.text_encoder_2], captions
    )
    n = len(captions)
    time_ids = make_add_time_ids(torch.tensor([hw] * n), torch.zeros(n, 2), hw)
    return {"encoder_hidden_states": embeds, "text_embeds": pooled, "time_ids": time_ids}


def _unet_out(unet, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=g)
    cond = {
        "text_embeds": torch.randn(2, 32, generator=g),
        "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2),
    }
    with torch.no_grad():
        return unet(
            x, torch.tensor([10.0, 700.0]), torch.randn(2, 77, 64, generator=g), added_cond_kwargs=cond
        ).sample


# ---- building, loading -----------------------------------------------------------------------------


def test_tiny_pipeline_sizes_and_vocabulary(pipe):
    counts = parameter_counts(pipe)
    assert 4_000_000 < counts["total"] < 9_000_000, counts
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 16
    assert pipe.unet.config.cross_attention_dim == (
        pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    )
    for word in [*COLORS, *SHAPES, "background"]:
        assert pipe.tokenizer.tokenize(word) == [word + "</w>"], word
    ids = pipe.tokenizer("a red circle")["input_ids"]
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id and len(ids) == 5
    # anything else still tokenises (byte fallback), and the pipeline pads to CLIP's 77
    assert pipe.tokenizer.tokenize("Zebra 42!") and pipe.tokenizer.model_max_length == 77


def test_round_trip_and_diffusers_call(pipe, base_dir):
    loaded = load_pipeline(base_dir)
    torch.testing.assert_close(_unet_out(loaded.unet), _unet_out(pipe.unet), rtol=0, atol=0)
    assert loaded.tokenizer_2("a blue square").input_ids == pipe.tokenizer_2("a blue square").input_ids
    out = loaded(
        "a red circle", num_inference_steps=2, output_type="pil", generator=torch.Generator().manual_seed(0)
    )
    assert out.images[0].size == (64, 64)
    assert build_tiny_pipeline(seed=0).unet.conv_in.weight.equal(pipe.unet.conv_in.weight)
    assert not build_tiny_pipeline(seed=1).unet.conv_in.weight.equal(pipe.unet.conv_in.weight)


def test_load_errors_name_the_path(base_dir, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_pipeline(missing)
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_components(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(base_dir, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(FileNotFoundError, match=r"broken.*unet/"):
        load_pipeline(broken)
    pickled = tmp_path / "pickled"
    shutil.copytree(base_dir, pickled)
    weights = next((pickled / "vae").glob("*.safetensors"))
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(FileNotFoundError, match=r"vae has no \.safetensors.*\.bin"):
        load_components(pickled)


# ---- conditioning, VAE -------------------------------------------------------------------------------


def test_encode_prompts_matches_diffusers(pipe):
    embeds, pooled = encode_prompts(
        [pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2], CAPTIONS
    )
    ref, _, ref_pooled, _ = pipe.encode_prompt(CAPTIONS, do_classifier_free_guidance=False)
    assert embeds.shape == (3, 77, 64) and pooled.shape == (3, 32)
    torch.testing.assert_close(embeds, ref, rtol=0, atol=0)
    torch.testing.assert_close(pooled, ref_pooled, rtol=0, atol=0)
    assert not torch.allclose(embeds[0], embeds[1])


def test_make_add_time_ids_matches_diffusers(pipe):
    original = torch.tensor([[512, 384], [64, 96]])
    crops = torch.tensor([[3, 7], [0, 11]])
    ours = make_add_time_ids(original, crops, (64, 80))
    for i in range(2):
        ref = pipe._get_add_time_ids(
            tuple(original[i].tolist()), tuple(crops[i].tolist()), (64, 80), torch.float32, 32
        )
        torch.testing.assert_close(ours[i : i + 1], ref)


def test_drop_captions():
    caps = [f"caption {i}" for i in range(400)]
    assert drop_captions(caps, 0.0) == caps
    assert drop_captions(caps, 1.0) == [""] * 400
    a = drop_captions(caps, 0.3, torch.Generator().manual_seed(1))
    assert a == drop_captions(caps, 0.3, torch.Generator().manual_seed(1))
    assert 80 < a.count("") < 160 and all(x in ("", c) for x, c in zip(a, caps, strict=True))
    with pytest.raises(ValueError, match="probability"):
        drop_captions(caps, 1.5)


def test_vae_encode_decode(pipe):
    images = [it.image for it in synthetic_items(3)]
    pixels = pil_to_tensor(images)
    assert pixels.shape == (3, 3, 64, 64) and pixels.min() >= -1 and pixels.max() <= 1
    assert np.array_equal(
        np.asarray(tensor_to_pil(((pixels + 1) * 127.5).round().to(torch.uint8))[0]), images[0]
    )
    latents = encode_images(pipe.vae, pixels)
    assert latents.shape == (3, 4, 16, 16)
    torch.testing.assert_close(
        latents, encode_images(pipe.vae, pixels), rtol=0, atol=0
    )  # the mean, no sampling
    raw = pipe.vae.encode(pixels).latent_dist.mean
    torch.testing.assert_close(latents, raw * pipe.vae.config.scaling_factor)
    decoded = decode_latents(pipe.vae, latents)
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 3, 64, 64)
    ref = pipe.image_processor.postprocess(pipe.vae.decode(raw).sample.detach(), output_type="np")
    assert np.abs((ref * 255).round().astype(int) - decoded.permute(0, 2, 3, 1).numpy()).max() <= 1


# ---- the denoiser boundary ---------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoiser_matches_euler_scheduler(pipe, comps, prediction_type):
    scheduler = comps.scheduler.__class__.from_config(comps.scheduler.config, prediction_type=prediction_type)
    scheduler.set_timesteps(10)
    cond = _cond(comps, CAPTIONS[:2])
    denoiser = SDXLDenoiser(comps.unet, scheduler.alphas_cumprod, prediction_type)
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), sdxl_alphas_cumprod(), rtol=1e-6, atol=0)
    for i in (1, 6):
        t, sigma = scheduler.timesteps[i], scheduler.sigmas[i]
        x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(i)) * sigma
        scheduler._step_index = None
        with torch.no_grad():
            out = comps.unet(
                scheduler.scale_model_input(x, t),
                t,
                encoder_hidden_states=cond["encoder_hidden_states"],
                added_cond_kwargs={"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]},
            ).sample
        ref = scheduler.step(out, t, x).pred_original_sample
        assert denoiser.timesteps(sigma.reshape(1)).item() == pytest.approx(t.item(), abs=1e-3)
        with torch.no_grad():
            ours = denoiser(x, sigma.expand(2), **cond)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_guided_is_one_batched_cfg_call(comps):
    calls = []
    base = SDXLDenoiser(comps.unet, comps.alphas_cumprod)

    def counting(x, sigma, **cond):
        calls.append(x.shape[0])
        return base(x, sigma, **cond)

    cond, uncond = _cond(comps, CAPTIONS[:2]), _cond(comps, ["", ""])
    x, sigma = torch.randn(2, 4, 16, 16), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        out = guided(counting, cond, uncond, 4.0)(x, sigma)
        c, u = base(x, sigma, **cond), base(x, sigma, **uncond)
        torch.testing.assert_close(out, u + 4.0 * (c - u), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(guided(base, cond, uncond, 1.0)(x, sigma), c)
    assert calls == [4]


# ---- LoRA and export ---------------------------------------------------------------------------------


def _perturb_lora(unet) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_lora_trains_only_attention(base_dir):
    unet = load_components(base_dir).unet
    before = _unet_out(unet)
    add_lora(unet, rank=4)
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".attn" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} >= {"to_q", "to_k", "to_v"}
    torch.testing.assert_close(_unet_out(unet), before)  # B = 0 at init: no change until trained
    _perturb_lora(unet)
    tuned = _unet_out(unet)
    assert not torch.allclose(tuned, before, atol=1e-4)
    state = lora_state_dict(unet)
    assert state and all(".lora." in k or "lora_" in k for k in state)
    merge_lora(unet)
    assert not has_lora(unet)
    torch.testing.assert_close(_unet_out(unet), tuned, rtol=1e-4, atol=1e-4)


def test_export_lora_run_loads_in_diffusers(base_dir, tmp_path):
    unet = load_components(base_dir).unet
    add_lora(unet, rank=2, alpha=6)  # alpha != rank: the saved config must carry it
    _perturb_lora(unet)
    tuned = _unet_out(unet)
    out = export_pipeline(
        base_dir, unet, tmp_path / "lora-run", {"sigma_n": 0.5, "trained_with_consistency": True}
    )
    assert has_lora(unet)  # the caller's UNet keeps its adapters; a merged copy was saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora-run"]  # no temporary folder left
    meta = read_metadata(out)
    assert meta["sigma_n"] == 0.5 and meta["has_lora"] is True and meta["trained_with_consistency"] is True

    merged = StableDiffusionXLPipeline.from_pretrained(out, use_safetensors=True)
    torch.testing.assert_close(_unet_out(merged.unet), tuned, rtol=1e-4, atol=1e-4)
    base = StableDiffusionXLPipeline.from_pretrained(base_dir, use_safetensors=True)
    torch.testing.assert_close(_unet_out(base.unet), _unet_out(load_components(base_dir).unet))
    base.load_lora_weights(out / "lora")
    torch.testing.assert_close(_unet_out(base.unet), tuned, rtol=1e-4, atol=1e-4)


def test_adapter_export_holds_no_base_copy_and_loads_as_the_tuned_model(base_dir, tmp_path):
    unet = load_components(base_dir).unet
    add_lora(unet, rank=4, alpha=1)  # scale 1/4: loading it as alpha = rank would quadruple the adapter
    _perturb_lora(unet)
    tuned = _unet_out(unet)
    out = export_adapter(str(base_dir), unet, tmp_path / "adapter", {"sigma_n": 0.5, "lora_rank": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert sorted(p.name for p in out.iterdir()) == ["ambient_export.json", "ambient_metadata.json", "lora"]
    meta = read_metadata(out)
    assert meta["export_kind"] == "lora_adapter" and meta["base_model"] == str(base_dir) and meta["has_lora"]
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < 0.2 * sum(f.stat().st_size for f in (base_dir / "unet").rglob("*"))

    # Every loader of the platform folds the adapter into the named base ...
    assert check_model_dir(out) == out
    loaded = load_components(out)
    assert not has_lora(loaded.unet)
    torch.testing.assert_close(_unet_out(loaded.unet), tuned, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_unet_out(load_pipeline(out).unet), tuned, rtol=1e-4, atol=1e-4)
    # ... and diffusers loads it on the base, alpha included.
    base = StableDiffusionXLPipeline.from_pretrained(base_dir, use_safetensors=True)
    base.load_lora_weights(out / "lora")
    torch.testing.assert_close(_unet_out(base.unet), tuned, rtol=1e-4, atol=1e-4)


def test_adapter_export_errors_name_what_is_missing(base_dir, tmp_path):
    unet = load_components(base_dir).unet
    with pytest.raises(ValueError, match="LoRA"):
        export_adapter(str(base_dir), unet, tmp_path / "plain", {})
    add_lora(unet, rank=2)
    out = export_adapter(str(tmp_path / "gone"), unet, tmp_path / "adapter", {})
    with pytest.raises(FileNotFoundError, match=r"its base model .*gone"):
        load_components(out)
    shutil.rmtree(out / "lora")
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights"):
        check_model_dir(out)


def test_export_full_run_samples_and_refuses_overwrite(base_dir, tmp_path):
    unet = load_components(base_dir).unet
    with torch.no_grad():
        unet.conv_out.bias.add_(0.25)  # stands in for training
    out = tmp_path / "full"
    version = export_pipeline(
        base_dir, unet, out, {"sigma_n": 0.2, "resolution": 64, "sampling_mode": "early_stop"}
    )
    assert read_metadata(out)["sampling_mode"] == "early_stop" and read_metadata(out)["has_lora"] is False
    loaded = StableDiffusionXLPipeline.from_pretrained(version, use_safetensors=True)
    torch.testing.assert_close(loaded.unet.conv_out.bias, unet.conv_out.bias)
    image = loaded("a red circle", num_inference_steps=2, height=64, width=96, output_type="pil").images[0]
    assert image.size == (96, 64)
    assert not (version / "lora").exists()

    with pytest.raises(FileExistsError, match="not empty"):
        export_pipeline(base_dir, unet, out, {"sigma_n": 0.3})
    assert read_metadata(out)["sigma_n"] == 0.2
    export_pipeline(base_dir, unet, out, {"sigma_n": 0.3}, overwrite=True)
    assert read_metadata(out)["sigma_n"] == 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    with pytest.raises(ValueError, match="JSON"):
        export_pipeline(base_dir, unet, tmp_path / "bad", {"sigma_n": object()})
    with pytest.raises(FileNotFoundError, match="ambient_metadata.json"):
        read_metadata(base_dir)


# ---- sampling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["heun", "posterior"])
def test_sample_images_per_prompt_seeds(comps, method):
    kwargs = {"mode": "full", "num_steps": 3, "guidance_scale": 3.0, "method": method}
    alone = sample_images(comps, [CAPTIONS[0]], seed=[11], **kwargs)
    batch = sample_images(comps, [CAPTIONS[1], CAPTIONS[0], CAPTIONS[0]], seed=[5, 11, 12], **kwargs)
    assert alone[0].size == (64, 64) and len(batch) == 3
    a, b = np.asarray(alone[0]).astype(int), np.asarray(batch[1]).astype(int)
    assert np.abs(a - b).max() <= 1 and (a == b).mean() > 0.99
    assert np.abs(np.asarray(batch[2]).astype(int) - a).max() > 10  # another seed, another image


def test_negative_prompts_are_per_image_and_default_to_empty(comps):
    kwargs = {"num_steps": 2, "guidance_scale": 3.0, "seed": [3, 4], "method": "heun"}
    default = sample_latents(comps, CAPTIONS[:2], **kwargs)
    # Existing callers (no negative prompts) get exactly the empty-prompt guidance, bit for bit.
    assert torch.equal(default, sample_latents(comps, CAPTIONS[:2], negative_prompts=["", ""], **kwargs))
    # A negative prompt steers its own image only.
    other = sample_latents(comps, CAPTIONS[:2], negative_prompts=["", "a blue square"], **kwargs)
    assert torch.equal(other[0], default[0])
    assert (other[1] - default[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="one per prompt"):
        sample_latents(comps, CAPTIONS[:2], negative_prompts=[""], **kwargs)
    with pytest.raises(ValueError, match="uncond='empty'"):
        sample_latents(comps, CAPTIONS[:2], negative_prompts=["", ""], uncond="zeros", **kwargs)


def test_sample_images_modes_and_sizes(comps):
    early = sample_images(
        comps,
        CAPTIONS[:2],
        mode="early_stop",
        sigma_n=0.8,
        num_steps=3,
        guidance_scale=1.0,
        seed=0,
        height=32,
        width=48,
    )
    assert [im.size for im in early] == [(48, 32)] * 2
    with pytest.raises(ValueError, match="multiples"):
        sample_images(comps, CAPTIONS[:1], num_steps=2, guidance_scale=1.0, seed=0, height=30, width=32)
    with pytest.raises(ValueError, match="seeds"):
        sample_images(comps, CAPTIONS[:2], num_steps=2, guidance_scale=1.0, seed=[1])
    grid = image_grid(early + early[:1], rows=2)
    assert grid.size == (96, 64)


# ---- the demo's default model ------------------------------------------------------------------------


def test_ensure_untrained_model_trains_once(tmp_path):
    stale = tmp_path / "tiny-sdxl-untrained-steps40"  # left by an older recipe: must be rebuilt, not reused
    stale.mkdir()
    (stale / "vae_pretrain.json").write_text('{"recipe": 0, "psnr_db": 99}')
    path = ensure_untrained_model(tmp_path, steps=40)
    assert path == stale
    report = json.loads((path / "vae_pretrain.json").read_text())
    assert report["psnr_db"] > report["psnr_db_untrained"] + 1.0, report
    pipe = load_pipeline(path)
    assert pipe.vae.config.scaling_factor == pytest.approx(report["scaling_factor"])
    latents = encode_images(pipe.vae, pil_to_tensor([it.image for it in synthetic_items(16, start=500)]))
    assert 0.5 < latents.std().item() < 2.0  # scaling_factor gives the diffusion latents unit spread
    stamp = (path / "unet").stat().st_mtime_ns
    assert ensure_untrained_model(tmp_path, steps=40) == path and (path / "unet").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [path.name]


def test_low_precision_models_keep_float32_math(comps):
    import copy

    unet16 = copy.deepcopy(comps.unet).to(torch.bfloat16)
    cond = _cond(comps, CAPTIONS[:2])
    x, sigma = torch.randn(2, 4, 16, 16) * 2.0, torch.tensor([2.0, 2.0])
    with torch.no_grad():
        ref = SDXLDenoiser(comps.unet, comps.alphas_cumprod)(x, sigma, **cond)
        low = SDXLDenoiser(unet16, comps.alphas_cumprod)(x, sigma, **cond)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()
    vae16 = copy.deepcopy(comps.vae).to(torch.bfloat16)
    pixels = pil_to_tensor([it.image for it in synthetic_items(2)])
    latents = encode_images(vae16, pixels)
    assert latents.dtype == torch.float32 and latents.shape == (2, 4, 16, 16)
    assert decode_latents(vae16, latents).dtype == torch.uint8


def test_sdxl_denoiser_runs_every_part_at_one_clamped_level():
    """Below the schedule's smallest sigma the timestep is clamped; the VP scaling and the x0
    conversion must use that same level, so h(x, sigma) = h(x, sigma_min) there."""
    from ambient.core import sdxl_alphas_cumprod
    from ambient.models.denoiser import SDXLDenoiser

    class ConstantEps(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, t, encoder_hidden_states, added_cond_kwargs, return_dict):
            return (self.scale * torch.ones_like(x) + t.reshape(-1, 1, 1, 1) * 0,)

    den = SDXLDenoiser(ConstantEps(), sdxl_alphas_cumprod())
    x = torch.randn(2, 4, 2, 2)
    kw = {
        "encoder_hidden_states": torch.zeros(2, 1, 1),
        "text_embeds": torch.zeros(2, 1),
        "time_ids": torch.zeros(2, 6),
    }
    floor = den.sigma_min
    below = den(x, torch.tensor([0.01, 0.002]), **kw)
    at = den(x, torch.tensor([floor, floor]), **kw)
    assert torch.allclose(below, at, atol=0, rtol=0)
    assert torch.allclose(den(x, torch.tensor([0.5, 0.5]), **kw), x - 0.5, atol=1e-5)
