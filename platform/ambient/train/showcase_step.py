"""After a run: the before/after picture (outputs/comparison.png) and its numbers in summary.json."""

from __future__ import annotations

import io

from PIL import Image

from ambient.core.sampling_spec import explicit_spec
from ambient.data.holdout import read_rows, row_ids
from ambient.eval.showcase import ShowcaseSampling, adherence_line, png_bytes, showcase
from ambient.models.loading import load_model_components
from ambient.storage import exists, read_bytes, write_bytes_atomic
from ambient.synthetic import world_of_id

from .config import FinetuneConfig
from .plan import RunPlan


def write_showcase(cfg: FinetuneConfig, plan: RunPlan) -> tuple[dict, list[str]]:
    """Write comparison.png beside the summary; returns its numbers (summary.json's ``showcase``) and
    lines to print."""
    section = cfg.showcase
    storage = cfg.storage.resolved()
    base, _ = load_model_components(plan.model_source, storage)
    finetuned, _ = load_model_components(plan.layout.model, storage)
    # Rows of the retained world (rehearsal mixed into the data) are not the new concept: left out,
    # unless the data is that world alone (a fine-tune on the base world itself).
    retained = section.retain_world
    worlds = {world_of_id(i) for i in row_ids(cfg.data.uri, storage)}
    rehearsal = retained is not None and retained in worlds and len(worlds) > 1
    rows = read_rows(
        cfg.data.uri,
        storage,
        limit=max(section.examples, section.adherence_prompts),
        keep=(lambda row_id: world_of_id(row_id) != retained) if rehearsal else None,
    )
    curve_uri = plan.layout.loss_curve
    curve = Image.open(io.BytesIO(read_bytes(curve_uri, storage))) if exists(curve_uri, storage) else None
    steps = {"steps": section.num_steps, "guidance": section.guidance_scale}
    # The base was trained on clean data: sampled to the end. The fine-tune in its own default mode.
    base_spec = explicit_spec("full", 0.0, **steps)
    finetuned_spec = explicit_spec(plan.sampling_mode, plan.sigma_n, **steps)
    picture, numbers = showcase(
        base,
        finetuned,
        rows,
        base_sampling=ShowcaseSampling(base_spec, section.seed, section.micro_batch),
        finetuned_sampling=ShowcaseSampling(finetuned_spec, section.seed, section.micro_batch),
        examples=section.examples,
        adherence_count=section.adherence_prompts,
        retain_world=section.retain_world,
        loss_curve=curve,
    )
    picture_uri = plan.layout.comparison
    write_bytes_atomic(picture_uri, png_bytes(picture), storage)
    return {"picture": picture_uri, **numbers}, [f"comparison:     {picture_uri}", *adherence_line(numbers)]
