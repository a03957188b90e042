"""One rule for the default sampling mode, and every user of it: training, serving, the audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ambient.core import default_sampling_mode, resolve_sampling_mode
from ambient.models.export import METADATA_FILE, sampling_defaults


def test_the_rule_and_its_resolution():
    assert default_sampling_mode(0.5, trained_with_consistency=False) == "early_stop"
    assert default_sampling_mode(0.5, trained_with_consistency=True) == "full"
    assert default_sampling_mode(0.0, trained_with_consistency=False) == "full"
    assert resolve_sampling_mode("auto", 0.5, "early_stop") == "early_stop"
    assert resolve_sampling_mode("full", 0.5, "early_stop") == "full"
    assert resolve_sampling_mode("early_stop", 0.0, "full") == "full"  # early stop at 0 is full
    with pytest.raises(ValueError, match="sampling mode"):
        resolve_sampling_mode("fast", 0.5, "full")


def test_an_exports_recorded_default_wins_over_the_rule():
    recorded = {"sigma_n": 0.5, "trained_with_consistency": True, "default_sampling_mode": "early_stop"}
    assert sampling_defaults(recorded).mode == "early_stop"
    assert sampling_defaults({"sigma_n": 0.5, "trained_with_consistency": False}).mode == "early_stop"
    assert sampling_defaults({}).mode == "full" and sampling_defaults({}).sigma_n == 0.0
    with pytest.raises(ValueError, match="default_sampling_mode"):
        sampling_defaults({"sigma_n": 0.5, "default_sampling_mode": "fast"})


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A tiny model whose metadata records early stop although it was trained with consistency."""
    from ambient.models import build_tiny_pipeline

    path = tmp_path_factory.mktemp("export") / "model"
    build_tiny_pipeline(seed=0, resolution=32).save_pretrained(path, safe_serialization=True)
    meta = {"sigma_n": 0.5, "trained_with_consistency": True, "default_sampling_mode": "early_stop"}
    (path / METADATA_FILE).write_text(json.dumps(meta))
    return path


def test_serving_honours_the_exports_default(export):
    from ambient.serve.model import ModelChoice, load_model

    model = load_model(ModelChoice("t", str(export)), None, torch.float32, torch.device("cpu"))
    assert (model.sigma_n, model.default_mode) == (0.5, "early_stop")


def test_the_audit_samples_each_model_in_its_own_mode_unless_told(export, tmp_path):
    from ambient.eval.api import generation_spec
    from ambient.eval.config import GenerationSection

    own = generation_spec(GenerationSection(), str(export))
    assert (own.mode, own.sigma_stop, own.steps, own.guidance) == ("early_stop", 0.5, 16, 1.0)
    told = generation_spec(GenerationSection(mode="full"), str(export))
    assert (told.mode, told.sigma_stop) == ("full", 0.0)
    lower = generation_spec(GenerationSection(mode="early_stop", sigma_n=0.2), str(export))
    assert (lower.mode, lower.sigma_stop) == ("early_stop", 0.2)
    bare = generation_spec(GenerationSection(), str(tmp_path))  # no metadata: a clean model
    assert (bare.mode, bare.sigma_stop) == ("full", 0.0)
    forced = generation_spec(GenerationSection(mode="early_stop"), str(tmp_path))
    assert (forced.mode, forced.sigma_stop) == ("full", 0.0)  # early stop at a clean model's 0 is full
