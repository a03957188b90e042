"""Package a pre-trained export as the committed default base model, with its measured adherence."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ambient.core.sampling_spec import explicit_spec
from ambient.models.base_model import BASE_DIR, package_base
from ambient.models.folders import resolve_export
from ambient.models.loading import load_components

from .showcase import ShowcaseSampling, model_adherence

REPRODUCE = "make base-model"
ADHERENCE_PROMPTS = 64


def stage_record(summary_path: str | Path) -> dict:
    """One training stage of the base, read from its run's summary.json."""
    summary = json.loads(Path(summary_path).read_text())
    keys = ("steps", "images_seen", "first_loss", "final_loss", "images_per_second", "wall_seconds")
    record = {key: summary.get(key) for key in keys}
    record["run"] = summary.get("run")
    record["model"] = summary.get("model_source")
    record["data"] = summary.get("data", {}).get("uri")
    return record


def release_base(
    export_dir: str | Path, summary_paths: Sequence[str | Path] = (), out_dir: Path = BASE_DIR
) -> Path:
    """Measure the export's prompt adherence (full sampling, 20 steps, guidance 3) on the base world and
    on the held-out colour pairs, then write it as the committed base with those numbers and one
    training record per stage (the runs' summary.json, in training order) in BASE.json."""
    export_dir = resolve_export(export_dir)  # a published export's current version: a diffusers folder
    comps = load_components(export_dir)
    sampling = ShowcaseSampling(explicit_spec("full", 0.0, steps=20, guidance=3.0))
    adherence = {
        world: model_adherence(comps, world, ADHERENCE_PROMPTS, sampling) for world in ("base", "heldout")
    }
    provenance = {
        "reproduce": REPRODUCE,
        "training": [stage_record(path) for path in summary_paths],
        "adherence": adherence,
        "adherence_sampling": {"mode": "full", "steps": 20, "guidance": 3.0, "prompts": ADHERENCE_PROMPTS},
        "unet_dtype": "float16",
    }
    return package_base(export_dir, provenance, out_dir)
