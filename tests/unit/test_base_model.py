"""The committed base model: hashes checked on load, float32 in the cache, and it draws the shape world."""

from __future__ import annotations

import json

import pytest
import torch

from ambient.core.sampling_spec import explicit_spec
from ambient.eval.showcase import ShowcaseSampling, model_adherence
from ambient.models import build_tiny_pipeline, load_components
from ambient.models.base_model import (
    BaseModelError,
    ensure_default_model,
    package_base,
    read_manifest,
    verify_base,
)

SAMPLING = ShowcaseSampling(explicit_spec("full", 0.0, steps=20, guidance=3.0))


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    build_tiny_pipeline(seed=3).save_pretrained(root / "export", safe_serialization=True)
    return package_base(root / "export", {"reproduce": "test"}, out_dir=root / "base")


def test_packaging_records_every_file_and_halves_the_unet(packaged):
    manifest = verify_base(packaged)
    assert manifest["reproduce"] == "test"
    assert "unet/diffusion_pytorch_model.safetensors" in manifest["files"]
    assert "vae/diffusion_pytorch_model.safetensors" in manifest["files"]
    unet = load_components(packaged).unet
    assert unet.dtype in (torch.float16, torch.float32)  # loaded as stored or upcast; both fine here
    from safetensors import safe_open

    with safe_open(str(packaged / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16


def test_a_changed_or_extra_file_is_refused_by_name(packaged, tmp_path):
    import shutil

    copy = tmp_path / "base"
    shutil.copytree(packaged, copy)
    weights = copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BaseModelError, match="vae/diffusion_pytorch_model.safetensors does not match"):
        verify_base(copy)
    shutil.copy2(packaged / "vae" / "diffusion_pytorch_model.safetensors", weights)
    (copy / "unet" / "extra.safetensors").write_bytes(b"x")
    with pytest.raises(BaseModelError, match="not in BASE.json: unet/extra.safetensors"):
        verify_base(copy)
    (copy / "BASE.json").unlink()
    with pytest.raises(BaseModelError, match="BASE.json is missing"):
        verify_base(copy)


def test_the_committed_base_is_at_most_25_mb_and_verifies():
    from ambient.models.base_model import BASE_DIR

    manifest = verify_base()
    size = sum(p.stat().st_size for p in BASE_DIR.rglob("*") if p.is_file())
    assert size <= 25 * 2**20, f"committed base is {size / 2**20:.1f} MiB"
    assert manifest["reproduce"] == "make base-model"


def test_default_model_is_the_base_in_float32_and_draws_held_out_colour_pairs(tmp_path):
    folder = ensure_default_model(tmp_path)
    assert json.loads((folder / "BASE.json").read_text())["files"] == read_manifest()["files"]
    assert ensure_default_model(tmp_path) == folder  # cached: written once
    comps = load_components(folder)
    assert comps.unet.dtype == torch.float32
    # On colour pairs its captions never had. The committed base scores 0.82 on 64 such prompts and
    # 0.81 on 192 (target 0.8) (held-out backgrounds are its weak part: docs/benchmarks.md). On these
    # 32 the bounds check that it draws what it is asked, far above the same model with an untrained UNet.
    held_out = model_adherence(comps, "heldout", 32, SAMPLING)
    from ambient.models.tiny import build_unet

    torch.manual_seed(0)
    comps.unet = build_unet()
    untrained = model_adherence(comps, "heldout", 16, SAMPLING)  # about 0.14 (chance: 16 prompts tell it)
    assert untrained["adherence"] < 0.3, untrained
    assert held_out["adherence"] >= 0.6 and held_out["adherence"] >= untrained["adherence"] + 0.3, (
        held_out,
        untrained,
    )


def test_each_training_stage_is_recorded_from_its_run_summary(tmp_path):
    from ambient.eval.base_release import stage_record

    summary = {"run": "base-refine", "steps": 1500, "images_seen": 48000, "first_loss": 0.4,
               "final_loss": 0.3, "images_per_second": 28.0, "wall_seconds": 1700.0,
               "model_source": "runs/base/ray/base-pretrain/outputs/model", "data": {"uri": "runs/base/shards"},
               "history": [{"step": 25}]}  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    record = stage_record(tmp_path / "summary.json")
    assert record == {"run": "base-refine", "steps": 1500, "images_seen": 48000, "first_loss": 0.4,
                      "final_loss": 0.3, "images_per_second": 28.0, "wall_seconds": 1700.0,
                      "model": "runs/base/ray/base-pretrain/outputs/model", "data": "runs/base/shards"}  # fmt: skip
