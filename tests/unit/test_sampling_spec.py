"""One SamplingSpec, built by one function from a request or config plus the export's metadata, for
every kind of model; the samplers, the server and the audit take it as built."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ambient import core
from ambient.core.sampling_spec import SamplingSpec, explicit_spec, sampling_spec, stop_level
from ambient.models.export import METADATA_FILE, sampling_defaults

CLEAN: dict = {}  # no metadata: a clean model
AMBIENT = {"sigma_n": 0.5, "trained_with_consistency": False}
CONSISTENT = {"sigma_n": 0.5, "trained_with_consistency": True}
RECORDED = {**CONSISTENT, "default_sampling_mode": "early_stop"}


def spec_for(metadata: dict, requested: str = "auto", sigma_n: float | None = None) -> SamplingSpec:
    own = sampling_defaults(metadata)
    level = own.sigma_n if sigma_n is None else sigma_n
    return sampling_spec(requested, level, own.mode, steps=4, guidance=2.0, method="euler")


@pytest.mark.parametrize(
    ("metadata", "requested", "mode", "sigma_stop"),
    [
        (CLEAN, "auto", "full", 0.0),
        (CLEAN, "early_stop", "full", 0.0),  # early stop at a clean model's 0 is full sampling
        (AMBIENT, "auto", "early_stop", 0.5),  # trained without consistency: stop at sigma_n
        (AMBIENT, "full", "full", 0.0),
        (CONSISTENT, "auto", "full", 0.0),  # consistent: sampled to the end
        (CONSISTENT, "early_stop", "early_stop", 0.5),
        (RECORDED, "auto", "early_stop", 0.5),  # the export's recorded default wins over the rule
    ],
)
def test_the_spec_of_each_kind_of_model(metadata, requested, mode, sigma_stop):
    spec = spec_for(metadata, requested)
    assert (spec.mode, spec.sigma_stop, spec.early_stop) == (mode, sigma_stop, sigma_stop > 0)
    assert (spec.steps, spec.guidance, spec.method) == (4, 2.0, "euler")


def test_an_override_of_the_level_is_the_stop_level():
    assert spec_for(AMBIENT, "early_stop", sigma_n=0.2).sigma_stop == 0.2
    assert spec_for(CLEAN, "early_stop", sigma_n=0.2).sigma_stop == 0.2
    assert spec_for(AMBIENT, "full", sigma_n=0.2).sigma_stop == 0.0
    assert stop_level("early_stop", 0.3) == 0.3 and stop_level("full", 0.3) == 0.0


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"requested": "fast"}, "sampling mode must be auto, full or early_stop, got 'fast'"),
        ({"sigma_n": -0.1}, "sigma_n must be a finite level >= 0"),
        ({"sigma_n": float("nan")}, "sigma_n must be a finite level >= 0"),
        ({"default_mode": "auto"}, "default sampling mode must be 'full' or 'early_stop'"),
        ({"steps": 0}, "steps must be an int >= 1, got 0"),
        ({"steps": 2.0}, "steps must be an int >= 1, got 2.0"),
        ({"steps": True}, "steps must be an int >= 1"),
        ({"guidance": -1.0}, "guidance must be a finite scale >= 0"),
        ({"method": "ddim"}, "method must be euler, heun or posterior, got 'ddim'"),
    ],
)
def test_bad_input_is_named(change, named):
    args = {"requested": "auto", "sigma_n": 0.5, "default_mode": "early_stop", "steps": 4, "guidance": 2.0}
    args |= change
    requested, sigma_n, default = args.pop("requested"), args.pop("sigma_n"), args.pop("default_mode")
    with pytest.raises(ValueError, match=named):
        sampling_spec(requested, sigma_n, default, **args)


def test_a_spec_whose_level_contradicts_its_mode_is_refused():
    with pytest.raises(ValueError, match="sigma_stop 0 does not match mode 'early_stop'"):
        SamplingSpec("early_stop", 0.0, 4, 2.0)
    with pytest.raises(ValueError, match="sigma_stop 0.5 does not match mode 'full'"):
        SamplingSpec("full", 0.5, 4, 2.0)
    with pytest.raises(ValueError, match="mode must be 'full' or 'early_stop', got 'auto'"):
        explicit_spec("auto", 0.5, steps=4, guidance=2.0)  # no export to ask for its default


def test_call_spec_takes_a_spec_or_the_keywords_not_both():
    from ambient.models.sampling import call_spec

    assert call_spec(None) == SamplingSpec("full", 0.0, 32, 5.0, "heun")  # the keywords' defaults
    assert call_spec(None, "early_stop", 0.0) == SamplingSpec("full", 0.0, 32, 5.0)  # as before
    assert call_spec(None, "early_stop", 0.5, 3).sigma_stop == 0.5
    spec = SamplingSpec("full", 0.0, 2, 1.0)
    assert call_spec(spec) is spec
    with pytest.raises(ValueError, match="give spec or num_steps, guidance_scale, not both"):
        call_spec(spec, num_steps=3, guidance_scale=1.0)
    with pytest.raises(ValueError, match="mode must be 'full' or 'early_stop', got 'fast'"):
        call_spec(None, "fast")  # type: ignore[arg-type]


def test_the_server_builds_the_spec_from_the_request_and_the_model():
    from ambient.serve.config import ServeConfig
    from ambient.serve.http import _generate_response, _job
    from ambient.serve.model import JobResult
    from ambient.serve.schemas import request_model

    cfg = ServeConfig()
    model = SimpleNamespace(vae_scale_factor=8, resolution=64, sigma_n=0.5, default_mode="early_stop")
    body = request_model(cfg.limits).model_validate({"prompt": "a", "seed": 1})
    job = _job(cfg, model, body)  # type: ignore[arg-type]
    defaults = cfg.defaults
    assert job.key.spec == SamplingSpec(
        "early_stop", 0.5, defaults.steps, defaults.guidance_scale, defaults.method
    )
    assert (job.key.height, job.key.width) == (64, 64)
    told = request_model(cfg.limits).model_validate(
        {"prompt": "a", "seed": 1, "sampling_mode": "full", "steps": 3, "guidance_scale": 1}
    )
    job = _job(cfg, model, told)  # type: ignore[arg-type]
    assert job.key.spec == SamplingSpec("full", 0.0, 3, 1.0, defaults.method)
    # The response reports what ran, under the API's own field names.
    reply = _generate_response(job, JobResult(pngs=[b"png"]), "rid")
    assert (reply.steps, reply.guidance_scale, reply.sampling_mode, reply.sigma_stop) == (3, 1.0, "full", 0.0)


def test_the_audit_builds_the_spec_from_its_config_and_the_metadata(tmp_path: Path):
    from ambient.eval.api import generation_spec
    from ambient.eval.config import GenerationSection

    (tmp_path / METADATA_FILE).write_text(json.dumps(AMBIENT))
    spec = generation_spec(GenerationSection(steps=3, guidance=2.5), str(tmp_path))
    assert spec == SamplingSpec("early_stop", 0.5, 3, 2.5, "heun")
    with pytest.raises(ValueError, match="sampling mode"):
        generation_spec(GenerationSection.model_construct(mode="fast", sigma_n=None), str(tmp_path))


def test_core_generate_follows_the_stop_level():
    def exact(x, sigma):  # the posterior mean of N(0, I) data
        return x / (1 + sigma.reshape(-1, 1) ** 2)

    def run(mode: str, sigma_n: float) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return core.generate(exact, (4, 2), mode=mode, sigma_n=sigma_n, num_steps=4, generator=g)

    assert torch.equal(run("early_stop", 0.0), run("full", 0.0))  # early stop at 0 is full sampling
    assert torch.equal(run("full", 0.5), run("full", 0.0))  # full sampling ignores sigma_n
    assert not torch.equal(run("early_stop", 0.5), run("full", 0.5))
    with pytest.raises(ValueError, match="mode must be 'full' or 'early_stop', got 'fast'"):
        run("fast", 0.0)


@pytest.fixture(scope="module")
def tiny_components():
    from ambient.models import SDXLComponents, build_tiny_pipeline

    return SDXLComponents.from_pipeline(build_tiny_pipeline(seed=0, resolution=32))


def test_the_sampler_takes_the_spec_as_built(tiny_components):
    from ambient.models.sampling import sample_latents

    spec = spec_for(AMBIENT)  # early stop at 0.5
    by_spec = sample_latents(tiny_components, ["a"], spec=spec, seed=3)
    by_keywords = sample_latents(
        tiny_components,
        ["a"],
        mode="early_stop",
        sigma_n=0.5,
        num_steps=4,
        guidance_scale=2.0,
        seed=3,
        method="euler",
    )
    assert torch.equal(by_spec, by_keywords)
    full = sample_latents(tiny_components, ["a"], spec=spec_for(AMBIENT, "full"), seed=3)
    assert not torch.equal(by_spec, full)
