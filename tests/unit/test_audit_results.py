"""The audit's typed results and its layout: report.json's keys, written and read through one record.

Committed reports (tests/unit/data/audit_report_*.json, written by real audits: an SDXL-size LoRA
without the sampler, and two tiny models with two attack timesteps and the sampler) must read and
write back byte for byte. An audit built from hand-made tensors (no model) is written with the real
writer and read back: the reader must see what the writer wrote, under the keys the committed reports
use. No Ray.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ambient.eval.adherence import prompt_adherence
from ambient.eval.api import ModelAudit, score_of
from ambient.eval.attack import AttackResult, to_uint8
from ambient.eval.config import AuditConfig
from ambient.eval.generation import GenerationResult
from ambient.eval.items import synthetic
from ambient.eval.quality import quality_metrics
from ambient.eval.report import write_report
from ambient.eval.results import (
    DEFAULT_THRESHOLDS,
    NEAR_DUPLICATE,
    AttackSummary,
    AuditLayout,
    AuditResult,
    GenerationSampling,
    GenerationSummary,
    ModelResult,
    VaeCeiling,
)

DATA = Path(__file__).resolve().parent / "data"
COMMITTED = sorted(DATA.glob("audit_report_*.json"))
ITEMS = 4


@pytest.fixture(scope="module")
def items():
    return synthetic(ITEMS, seed=0, resolution=64)


def _audit(items, label: str, *, sampled: bool = True, quality: bool = True, adherence: bool = True):
    """A ModelAudit as audit_model builds it, from made-up numbers (the originals stand in for every
    reconstruction and generation)."""
    pixels = to_uint8(items.pixels)
    sims = torch.tensor([0.2, 0.4, 0.6, 0.97])
    attack = AttackResult(
        timestep=900.0,
        sigma=8.35,
        mask="none",
        tweedie_similarity=sims,
        tweedie_psnr=sims * 30,
        images={"corrupted": pixels, "tweedie": pixels},
    )
    if sampled:
        attack.sample_similarity, attack.sample_psnr = sims / 2, sims * 20
        attack.images["sample"] = pixels
    generation = GenerationResult(
        captions=list(items.captions),
        seeds=list(range(ITEMS)),
        images=pixels,
        max_similarity=torch.tensor([0.99, 0.96, 0.92, 0.5]),
        nearest=torch.tensor([0, 1, 3, 2]),
        thresholds=list(DEFAULT_THRESHOLDS),
    )
    audit = ModelAudit(
        label=label,
        path=f"/models/{label}",
        attacks=[attack],
        vae_ceiling=VaeCeiling(similarity_mean=0.96, psnr_mean=26.3),
        generation=generation,
        generation_sampling=GenerationSampling(mode="full", sigma_n=0.0),
        quality=quality_metrics(pixels, pixels) if quality else None,
        prompt_adherence=prompt_adherence(pixels, generation.captions) if adherence else None,
    )
    audit.score, audit.score_name = score_of(audit, "generation"), "generation"
    return audit


def _write(tmp_path: Path, items, audits) -> AuditLayout:
    layout = AuditLayout(tmp_path / "audit")
    cfg = AuditConfig(items={"count": ITEMS}, output_dir=str(layout.root))
    assert write_report(layout.root, cfg, items, to_uint8(items.pixels), audits) == layout.report_md
    return layout


def _keys(value):
    """The shape of a JSON value: its keys, recursively (a list by its first element)."""
    if isinstance(value, dict):
        return {k: _keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys(value[0])] if value else []
    return None


@pytest.mark.parametrize("path", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_committed_reports_read_and_write_back_unchanged(path):
    text = path.read_text()
    result = AuditResult.read(path)
    assert result.to_json() == text
    assert AuditResult.from_dict(json.loads(result.to_json())) == result


def test_committed_reports_are_there():
    assert len(COMMITTED) >= 2, COMMITTED


def test_the_writer_writes_the_committed_keys(tmp_path, items):
    """A key spelt otherwise by the writer than in the reports already written (which the reader and
    every consumer of report.json read) fails here."""
    layout = _write(tmp_path, items, [_audit(items, "a"), _audit(items, "b")])
    written = json.loads(layout.report_json.read_text())
    committed = json.loads((DATA / "audit_report_tiny_two_models.json").read_text())
    assert _keys(written["models"]) == _keys(committed["models"])
    assert _keys(written["items"]) == _keys(committed["items"])
    assert set(written) == set(committed)
    assert list(written["models"][0]["generation"]["fraction_above"]) == ["0.9", "0.95", "0.99"]


def test_the_reader_reads_what_the_writer_wrote(tmp_path, items):
    audits = [_audit(items, "a"), _audit(items, "b", quality=False)]
    layout = _write(tmp_path, items, audits)
    result = AuditResult.read(layout.report_json)
    assert result.to_json() == layout.report_json.read_text()
    assert [m.label for m in result.models] == ["a", "b"]
    assert [i.id for i in result.items] == items.ids
    a, b = result.model("a"), result.model("b")
    gen = audits[0].generation
    assert a.generation.above(NEAR_DUPLICATE) == gen.fraction_above(NEAR_DUPLICATE) == a.memorization_score
    assert a.generation.thresholds == list(DEFAULT_THRESHOLDS)
    assert a.attacks[0].sample.similarity_mean == pytest.approx(0.27125, abs=1e-6)
    assert a.attacks[0].tweedie.similarity_max == pytest.approx(0.97, abs=1e-6)
    assert a.quality == audits[0].quality and a.prompt_adherence == audits[0].prompt_adherence
    assert a.vae_ceiling == audits[0].vae_ceiling and a.generation_sampling == audits[0].generation_sampling
    assert a.generation_nearest == [items.ids[j] for j in (0, 1, 3, 2)]
    assert a.per_item[0].tweedie_similarity == audits[0].attacks[0].tweedie_similarity.tolist()
    # without the Fréchet distances: the JSON's quality holds prompt adherence alone
    assert b.quality is None and b.prompt_adherence == audits[1].prompt_adherence
    assert list(json.loads(layout.report_json.read_text())["models"][1]["quality"]) == ["prompt_adherence"]


def test_report_md_shows_the_numbers_and_the_layouts_files(tmp_path, items):
    layout = _write(tmp_path, items, [_audit(items, "a"), _audit(items, "b")])
    text = layout.report_md.read_text()
    result = AuditResult.read(layout.report_json)
    assert "| | a | b |" in text
    above = [f"{m.generation.above(NEAR_DUPLICATE):.3f}" for m in result.models]
    assert f"| generation: fraction above {NEAR_DUPLICATE:g} | {above[0]} | {above[1]} |" in text
    files = [layout.histogram] + [
        path
        for m in result.models
        for path in (layout.attack_grid(m.label, 900), layout.top_matches(m.label))
    ]
    for path in files:
        assert f"]({path.name})" in text and path.is_file()
    assert layout.attack_grids("a") == {900.0: layout.attack_grid("a", 900)}


def test_without_the_sampler_or_any_quality(tmp_path, items):
    """What did not run is absent from the JSON (the sampler's numbers) or null (quality), and None
    when read."""
    audits = [_audit(items, "s", sampled=False, quality=False, adherence=False)]
    layout = _write(tmp_path, items, audits)
    raw = json.loads(layout.report_json.read_text())["models"][0]
    assert "sample_similarity_mean" not in raw["attacks"][0] and raw["quality"] is None
    assert raw["per_item"][0]["sample_similarity"] is None
    result = AuditResult.read(layout.report_json)
    assert result.to_json() == layout.report_json.read_text()
    model = result.model("s")
    assert model.attacks[0].sample is None and model.quality is None and model.prompt_adherence is None
    assert "sampler" not in layout.report_md.read_text() and "fd_builtin" not in layout.report_md.read_text()


def test_a_misspelt_key_is_an_error_naming_it():
    committed = json.loads((DATA / "audit_report_tiny_two_models.json").read_text())
    model = committed["models"][0]
    attack = dict(model["attacks"][0])
    attack["tweedie_psnr"] = attack.pop("tweedie_psnr_mean")
    with pytest.raises(ValueError, match="tweedie_psnr"):
        AttackSummary.from_dict(attack)
    with pytest.raises(ValueError, match="memorisation_score"):
        ModelResult.from_dict({**model, "memorisation_score": 0.5})
    summary = GenerationSummary.from_dict(model["generation"])
    with pytest.raises(KeyError, match="0.5"):
        summary.above(0.5)


def test_a_nan_score_survives_the_round_trip():
    committed = json.loads((DATA / "audit_report_tiny_two_models.json").read_text())
    model = ModelResult.from_dict({**committed["models"][0], "memorization_score": float("nan")})
    assert math.isnan(ModelResult.from_dict(json.loads(json.dumps(model.to_dict()))).memorization_score)


def test_layout_names_each_file_once(tmp_path):
    layout = AuditLayout(tmp_path)
    assert layout.report_json == tmp_path / "report.json" and layout.report_md == tmp_path / "report.md"
    assert layout.histogram == tmp_path / "generation_similarity.png"
    assert layout.attack_grid("clean", 900.0).name == "attack_clean_t900.png"
    assert layout.attack_grid("clean", 412.5).name == "attack_clean_t412.5.png"
    assert layout.top_matches("clean").name == "top_matches_clean.png"
    # a label that extends another ("a" and "a_t5") is not mistaken for the other's grid
    for label, t in (("a", 900), ("a", 300), ("a_t5", 900)):
        layout.attack_grid(label, t).write_bytes(b"")
    assert layout.attack_grids("a") == {
        900.0: layout.attack_grid("a", 900),
        300.0: layout.attack_grid("a", 300),
    }
    assert layout.attack_grids("a_t5") == {900.0: layout.attack_grid("a_t5", 900)}
    assert layout.attack_grids("missing") == {}


def test_thresholds_are_defined_once():
    """The reported thresholds include the near-duplicate one that the 'generation' score uses."""
    cfg = AuditConfig()
    assert NEAR_DUPLICATE in cfg.generation.thresholds
    assert f"{NEAR_DUPLICATE:g}" in AuditConfig.model_fields["score"].description
