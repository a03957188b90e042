"""The memorization audit end to end on the tiny model: a deliberately over-fit UNet against the untrained one.

The over-fit model is the untrained tiny model (VAE trained, UNet random) whose UNet was trained with a plain PyTorch loop on the
clean latents of 4 synthetic images (ambient.eval.overfit), at the attack's noise levels. The attack
must tell it from the untrained UNet, and the compare report must hold both, side by side.
"""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from ambient.config import load_config
from ambient.eval import AuditConfig, memorization_score, run_audit
from ambient.eval.items import from_dataset, synthetic
from ambient.eval.overfit import overfit_model
from ambient.eval.results import DEFAULT_THRESHOLDS, AuditLayout, AuditResult

ITEMS = 4
OVERFIT_STEPS = 120  # about a minute on 2 loaded cores; reaches a Tweedie similarity of ~0.7


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # On a shared 2-core machine OpenMP threads spinning against other processes are slower than one.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def overfit(untrained_model, tmp_path_factory) -> str:
    items = synthetic(ITEMS, seed=0, resolution=64)
    out, report = overfit_model(
        untrained_model,
        items,
        tmp_path_factory.mktemp("overfit") / "model",
        steps=OVERFIT_STEPS,
        lr=1e-3,
        t_range=(800, 999),
    )
    # It did learn its 4 images: the tiny model predicts v, so the first x0 error is about the latents'
    # variance (measured 0.91) and 120 steps bring it to 0.07. lr 3e-3 reached 0.15 on one machine and
    # oscillated at 0.48 on another with the same weights and seed (a different CPU's float rounding):
    # it was at the edge of stability.
    assert report["loss_last10"] < report["loss_first"] / 4
    return str(out)


def _config(tmp_path, untrained_model: str, overfit: str) -> AuditConfig:
    return load_config(
        AuditConfig,
        overrides=[
            f"models=[{{path: {untrained_model}, label: untrained}}, {{path: {overfit}, label: overfit}}]",
            f"items.count={ITEMS}",
            "attack.steps=6",
            "generation.n=4",
            "generation.steps=6",
            "generation.top_k=3",
            f"output_dir={tmp_path / 'report'}",
        ],
    )


def test_attack_scores_the_overfit_model_higher(untrained_model, overfit):
    items = synthetic(ITEMS, seed=0, resolution=64)
    untrained = memorization_score(untrained_model, items)
    memorized = memorization_score(overfit, items)
    print(f"memorization score (Tweedie at t=900): untrained {untrained:.3f}, overfit {memorized:.3f}")
    assert -1 <= untrained <= 1 and -1 <= memorized <= 1
    assert memorized > untrained + 0.3  # measured (v prediction, 120 steps, lr 1e-3): 0.02 vs 0.87


def test_compare_report_side_by_side(tmp_path, untrained_model, overfit):
    cfg = _config(tmp_path, untrained_model, overfit)
    md = run_audit(cfg)
    layout = AuditLayout(cfg.output_dir)
    assert md == layout.report_md
    text = md.read_text()
    assert "| untrained | overfit |" in text and "fd_builtin" in text and "NOT FID" in text
    report = AuditResult.read(layout.report_json)
    assert [m.label for m in report.models] == ["untrained", "overfit"]
    assert [it.id for it in report.items] == [f"synthetic-0-{i:06d}" for i in range(ITEMS)]
    untrained, memorized = report.models
    for model in report.models:
        attack = model.attacks[0]
        assert attack.timestep == 900 and attack.sigma == pytest.approx(8.35, abs=0.05)
        assert model.generation.n == 4 and model.generation.thresholds == list(DEFAULT_THRESHOLDS)
        assert math.isfinite(model.quality.fd_builtin) and model.quality.fid is None
        assert len(model.per_item[0].tweedie_similarity) == ITEMS
    # the whole sampler from the corrupted point also returns the over-fit model's images
    assert memorized.attacks[0].sample.similarity_mean > untrained.attacks[0].sample.similarity_mean
    # the report's score is the sweep's score (same items, seed, features)
    assert memorized.memorization_score == pytest.approx(
        memorization_score(overfit, synthetic(ITEMS, seed=0, resolution=64)), abs=1e-4
    )
    pngs = [layout.histogram] + [
        path
        for label in ("untrained", "overfit")
        for path in (layout.attack_grid(label, 900), layout.top_matches(label))
    ]
    for path in pngs:
        assert path.name in text
        with Image.open(path) as im:
            im.load()
            assert im.width > 64 and im.height >= 64
    with Image.open(
        layout.attack_grid("overfit", 900)
    ) as im:  # original | corrupted | tweedie | sample, 4 rows
        assert im.size == (4 * 64, ITEMS * 64)


def test_items_from_training_shards(demo_shards, untrained_model):
    """The sweep's path: the synthetic demo's noisy shards are re-rendered into their originals."""
    items = from_dataset(demo_shards, 3, None)
    expected = synthetic(3, seed=0, resolution=64)
    assert items.ids == expected.ids and items.captions == expected.captions
    assert torch.equal(items.pixels, expected.pixels)
    score = memorization_score(untrained_model, demo_shards, config=AuditConfig(items={"count": 3}))
    assert -1 <= score <= 1


def test_masked_attack_still_separates_the_models(untrained_model, overfit):
    from ambient.eval.attack import reconstruction_attack, to_uint8
    from ambient.eval.features import BuiltinFeatures, FeatureSpace
    from ambient.models.loading import load_components

    items = synthetic(ITEMS, seed=0, resolution=64)
    space = FeatureSpace(BuiltinFeatures(), to_uint8(items.pixels))
    scores, corrupted = {}, {}
    for name, path in (("untrained", untrained_model), ("overfit", overfit)):
        comps = load_components(path)
        for mask in ("none", "center"):
            result = reconstruction_attack(
                comps, items.ids, items.captions, items.pixels, space, mask=mask, run_sampler=False
            )
            scores[name, mask] = float(result.tweedie_similarity.mean())
            corrupted[name, mask] = result.images["corrupted"]
    print(f"masked attack scores: {scores}")
    # the same frozen corruption for every model; the mask changes it
    assert torch.equal(corrupted["untrained", "center"], corrupted["overfit", "center"])
    assert not torch.equal(corrupted["overfit", "none"], corrupted["overfit", "center"])
    assert scores["overfit", "center"] > scores["untrained", "center"] + 0.05


def test_job_prints_the_report_path_last(tmp_path, untrained_model):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "job"
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "jobs" / "audit.py"),
            *(
                "--set",
                f"models=[{{path: {untrained_model}}}]",
                "--set",
                "items.count=2",
                "--set",
                "attack.steps=2",
            ),
            *("--set", "generation.n=2", "--set", "generation.steps=2", "--set", f"output_dir={out}"),
            *("--set", "threads=1"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    layout = AuditLayout(out)
    assert Path(last) == layout.report_md and Path(last).is_file()
    assert AuditResult.read(layout.report_json).models[0].generation.n == 2
