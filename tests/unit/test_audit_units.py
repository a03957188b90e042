"""Audit building blocks: feature similarity, Fréchet distances, the attack's mask, config and path errors.

No model and no Ray: the built-in descriptor on synthetic images, a tiny random DINOv2 saved locally
(no download), a tiny TorchScript stand-in for the Inception loader's calling convention.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ambient.config import ConfigError, load_config
from ambient.eval.attack import erase_mask, psnr, to_uint8
from ambient.eval.config import AuditConfig, check_paths
from ambient.eval.features import BuiltinFeatures, DinoV2Features, FeatureSpace, cosine_similarity
from ambient.eval.items import from_dataset, from_folder, synthetic
from ambient.eval.quality import (
    FID_REFERENCE_ITEMS,
    fd_builtin,
    frechet_distance,
    load_reference_stats,
    quality_metrics,
)
from ambient.eval.results import NEAR_DUPLICATE


@pytest.fixture(scope="module")
def shapes() -> torch.Tensor:
    return synthetic(16, seed=0, resolution=64).pixels


def test_identical_images_have_similarity_one(shapes):
    space = FeatureSpace(BuiltinFeatures(), shapes)
    assert torch.allclose(space.paired(shapes, shapes), torch.ones(len(shapes)), atol=1e-5)
    assert torch.allclose(
        cosine_similarity(BuiltinFeatures(), shapes, shapes), torch.ones(len(shapes)), atol=1e-5
    )
    # uint8 and [-1, 1] inputs are the same image
    assert torch.allclose(space.paired(to_uint8(shapes), shapes), torch.ones(len(shapes)), atol=1e-2)
    # each training image's nearest reference is itself
    sims = space.to_reference(shapes)
    assert torch.equal(sims.argmax(1), torch.arange(len(shapes)))


def test_unrelated_images_have_low_similarity(shapes):
    space = FeatureSpace(BuiltinFeatures(), shapes)
    other = shapes.roll(1, dims=0)  # every image paired with a different one
    unrelated = space.paired(shapes, other)
    assert unrelated.mean() < 0.2 and unrelated.max() < 0.5
    noise = torch.rand(len(shapes), 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert space.paired(shapes, noise).abs().mean() < 0.4
    # a near-duplicate (small pixel noise) stays above the audit's near-duplicate threshold
    jitter = (shapes + 0.02 * torch.randn(shapes.shape, generator=torch.Generator().manual_seed(1))).clamp(
        -1, 1
    )
    assert space.paired(shapes, jitter).min() > NEAR_DUPLICATE


def test_a_plain_background_is_no_near_duplicate(shapes):
    """An image of the right background colour without the shape must stay below 0.9, even for a red
    diamond on purple (nearly iso-luminant: a luminance-only edge descriptor scored it 0.96)."""
    space = FeatureSpace(BuiltinFeatures(), shapes)
    corner = shapes[:, :, :1, :1]
    flats = corner.expand_as(shapes).clone()
    sims = space.paired(shapes, flats)
    assert sims.max() < 0.9
    # shifts: 2 pixels still similar, 8 pixels (an eighth of the image) no longer a near-duplicate
    assert space.paired(shapes, shapes.roll(2, dims=-1)).mean() > 0.85
    assert space.paired(shapes, shapes.roll(8, dims=-1)).mean() < 0.8


def test_dinov2_from_a_local_folder(tmp_path, shapes):
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=56,
        patch_size=14,
    )
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(tmp_path / "dino")
    features = DinoV2Features(tmp_path / "dino")
    out = features.embed(shapes[:4])
    assert out.shape == (4, 32)
    space = FeatureSpace(features, shapes[:4])
    assert space.centre is None  # DINOv2 features are compared raw
    assert torch.allclose(space.paired(shapes[:4], shapes[:4]), torch.ones(4), atol=1e-5)


def test_frechet_distance_against_closed_form():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    cov = a @ a.T + np.eye(4)
    mu = rng.standard_normal(4)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, 2.0, 0.0, 0.0])
    assert frechet_distance(mu, cov, mu + shift, cov) == pytest.approx(5.0, rel=1e-6)
    # isotropic covariances s1^2 I and s2^2 I: d (s1 - s2)^2
    assert frechet_distance(mu, np.eye(4), mu, 4 * np.eye(4)) == pytest.approx(4.0, rel=1e-6)


def test_fd_builtin_separates_distributions(shapes):
    more = synthetic(16, seed=0, resolution=64, start=100).pixels
    noise = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    same = fd_builtin(shapes, shapes)
    close = fd_builtin(shapes, more)
    far = fd_builtin(shapes, noise)
    assert same == pytest.approx(0.0, abs=1e-6)
    assert close < far


class _FakeInception(torch.nn.Module):
    """The calling convention of clean-fid's TorchScript Inception: (images in [0, 255], return_features)."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x / 255.0, 4).flatten(1)
        return pooled if return_features else pooled.sum(1, keepdim=True)


def test_inception_loader_and_reference_stats(tmp_path, shapes):
    path = tmp_path / "inception.pt"
    torch.jit.script(_FakeInception()).save(str(path))
    out = quality_metrics(to_uint8(shapes), to_uint8(shapes), inception=str(path))
    assert out.fid == pytest.approx(0.0, abs=1e-4)
    assert out.fid_reference == FID_REFERENCE_ITEMS
    feats = (
        torch.nn.functional.adaptive_avg_pool2d(to_uint8(shapes).float() / 255.0, 4)
        .flatten(1)
        .double()
        .numpy()
    )
    np.savez(tmp_path / "ref.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    out = quality_metrics(
        to_uint8(shapes), to_uint8(shapes), inception=str(path), reference_stats=str(tmp_path / "ref.npz")
    )
    assert out.fid == pytest.approx(0.0, abs=1e-4) and out.fid_reference == str(tmp_path / "ref.npz")

    bad = tmp_path / "not-torchscript.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not-torchscript.pt"):
        quality_metrics(to_uint8(shapes), to_uint8(shapes), inception=str(bad))
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.npz"):
        load_reference_stats(tmp_path / "bad.npz")


def test_erase_mask_and_psnr():
    assert erase_mask((2, 4, 16, 16), "none").sum() == 256
    centre = erase_mask((2, 4, 16, 16), "center", 0.5)
    assert centre.sum() == 256 - 64 and centre[0, 0, 8, 8] == 0 and centre[0, 0, 0, 0] == 1
    assert erase_mask((1, 4, 16, 16), "right_half")[..., 8:].sum() == 0
    with pytest.raises(ValueError, match="mask"):
        erase_mask((1, 4, 16, 16), "diagonal")
    a = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    assert psnr(a, a + 1).item() == pytest.approx(10 * np.log10(255**2), rel=1e-6)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="features"):
        load_config(AuditConfig, overrides=["features.kind=dinov2"])
    with pytest.raises(ConfigError, match="items.path"):
        load_config(AuditConfig, overrides=["items.kind=folder"])
    with pytest.raises(ConfigError, match="attack.timesteps"):
        load_config(AuditConfig, overrides=["attack.timesteps=[1200]"])
    with pytest.raises(ConfigError, match="quality.reference_stats"):
        load_config(AuditConfig, overrides=["quality.reference_stats=/x.npz"])
    with pytest.raises(ConfigError, match="unknown field"):
        load_config(AuditConfig, overrides=["atack.steps=3"])


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("features.weights", "features.weights"),
        ("quality.inception", "quality.inception"),
        ("models", "models[0].path"),
        ("items.path", "items.path"),
    ],
)
def test_missing_paths_are_clear_errors(tmp_path, override, named):
    missing = tmp_path / "does-not-exist"
    sets = {
        "features.weights": ["features.kind=dinov2", f"features.weights={missing}"],
        "quality.inception": [f"quality.inception={missing}"],
        "models": [f"models=[{{path: {missing}}}]"],
        "items.path": ["items.kind=folder", f"items.path={missing}"],
    }[override]
    cfg = load_config(AuditConfig, overrides=sets)
    with pytest.raises(FileNotFoundError) as err:
        check_paths(cfg)
    assert named in str(err.value) and str(missing) in str(err.value)


def test_not_a_model_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = load_config(AuditConfig, overrides=[f"models=[{{path: {tmp_path / 'empty'}}}]"])
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        check_paths(cfg)


def test_unreadable_item_images_are_clear_errors(tmp_path):
    folder = tmp_path / "originals"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"this is not a png")
    (folder / "a.txt").write_text("a red circle on a blue background")
    with pytest.raises(ValueError, match="a.png"):
        from_folder(folder, 4, 64)
    (folder / "a.txt").unlink()
    with pytest.raises(ValueError, match="no image with a caption"):
        from_folder(folder, 4, 64)


def test_folder_items_match_the_originals(tmp_path):
    folder = tmp_path / "originals"
    folder.mkdir()
    ref = synthetic(3, seed=0, resolution=64)
    for i, (img, cap) in enumerate(zip(ref.pixels, ref.captions, strict=True)):
        from PIL import Image

        Image.fromarray(to_uint8(img).permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(cap)
    items = from_folder(folder, 8, 64)
    assert items.captions == ref.captions
    assert torch.allclose(items.pixels, ref.pixels, atol=1 / 127.5)


def test_unreadable_dataset_is_a_clear_error(tmp_path):
    from ambient.data.errors import DataError

    (tmp_path / "shards").mkdir()
    with pytest.raises(DataError, match=str(tmp_path / "shards")):
        from_dataset(str(tmp_path / "shards"), 4, None)
