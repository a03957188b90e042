"""How a model is sampled, decided once: the mode rules and the ``SamplingSpec`` every sampler takes.

A model trained without consistency is sampled down to its data level sigma_n and finished with one
Tweedie step ("early_stop"); a consistent or clean model is sampled to the end ("full"). Serving, the
audit, training validation and the benchmarks all turn what they were asked (a request, a config
section) plus what the export records (its sigma_n and default mode) into a spec with
``sampling_spec``; the samplers read the stop level from the spec and never re-derive it.

Pure Python: no torch, so config and request handling can build a spec without the model.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

SamplingMode = Literal["full", "early_stop"]
RequestedMode = Literal["auto", "full", "early_stop"]
Method = Literal["euler", "heun", "posterior"]

MODES: tuple[str, ...] = ("full", "early_stop")
REQUESTED_MODES: tuple[str, ...] = ("auto", *MODES)
METHODS: tuple[str, ...] = ("euler", "heun", "posterior")


def default_sampling_mode(sigma_n: float, trained_with_consistency: bool) -> SamplingMode:
    """The one rule for how a model is sampled by default: "full" (to sigma = 0) when it was trained
    with the consistency loss or on clean data (sigma_n = 0), else "early_stop" (down to sigma_n and
    one Tweedie step: a model trained only above sigma_n is not trusted below it)."""
    return "full" if trained_with_consistency or sigma_n == 0 else "early_stop"


def resolve_sampling_mode(requested: str, sigma_n: float, default: SamplingMode) -> SamplingMode:
    """The mode that runs: ``default`` for "auto", else the requested one; "full" whenever sigma_n = 0
    (early stop at 0 is full sampling, and callers report what ran)."""
    if requested not in REQUESTED_MODES:
        raise ValueError(f"sampling mode must be auto, full or early_stop, got {requested!r}")
    if sigma_n == 0:
        return "full"
    return default if requested == "auto" else requested  # type: ignore[return-value]


def stop_level(mode: SamplingMode, sigma_n: float) -> float:
    """The level a sampler stops at: sigma_n for early stop (then one Tweedie step), 0 for full.
    The one place this rule is written; ``sampling_spec`` and ``generate`` ask it."""
    return float(sigma_n) if mode == "early_stop" else 0.0


@dataclass(frozen=True)
class SamplingSpec:
    """What one sampling call runs, resolved: the mode, the level it stops at, and the sampler.

    ``sigma_stop`` is sigma_n for early stop (the sampler stops there and takes one Tweedie step) and
    0 for full sampling; the two always agree, so a sampler reads the stop level and nothing else.
    Build one with ``sampling_spec``; equal specs may share a batched model call.
    """

    mode: SamplingMode
    sigma_stop: float
    steps: int
    guidance: float
    method: Method = "heun"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'full' or 'early_stop', got {self.mode!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be euler, heun or posterior, got {self.method!r}")
        if not math.isfinite(self.sigma_stop) or self.sigma_stop < 0:
            raise ValueError(f"sigma_stop must be a finite level >= 0, got {self.sigma_stop}")
        # The stop level is what samplers branch on: a mismatch would sample one way and report another.
        if (self.mode == "early_stop") != (self.sigma_stop > 0):
            raise ValueError(
                f"sigma_stop {self.sigma_stop:g} does not match mode {self.mode!r}: early_stop stops "
                "at sigma_n > 0, full at 0 (build specs with sampling_spec)"
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise ValueError(f"guidance must be a finite scale >= 0, got {self.guidance}")

    @property
    def early_stop(self) -> bool:
        """Whether the sampler stops at ``sigma_stop`` and finishes with one Tweedie step."""
        return self.sigma_stop > 0


def sampling_spec(
    requested: str,
    sigma_n: float,
    default_mode: SamplingMode,
    *,
    steps: int,
    guidance: float,
    method: Method = "heun",
) -> SamplingSpec:
    """The spec for a request or config asking for ``requested`` ("auto", "full" or "early_stop")
    of a model whose export records ``sigma_n`` and ``default_mode`` (``models.export.sampling_defaults``;
    a caller that overrides the level passes its own sigma_n). Bad input is refused by name."""
    if not math.isfinite(sigma_n) or sigma_n < 0:
        raise ValueError(f"sigma_n must be a finite level >= 0, got {sigma_n}")
    if default_mode not in MODES:
        raise ValueError(f"default sampling mode must be 'full' or 'early_stop', got {default_mode!r}")
    mode = resolve_sampling_mode(requested, sigma_n, default_mode)
    return SamplingSpec(mode, stop_level(mode, sigma_n), steps, float(guidance), method)


def explicit_spec(
    mode: str, sigma_n: float, *, steps: int, guidance: float, method: Method = "heun"
) -> SamplingSpec:
    """The spec for a caller that names the mode itself (training validation, the sweep, tests):
    ``sampling_spec`` with that mode as the default; "auto" is refused, there being no export to ask."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'full' or 'early_stop', got {mode!r}")
    default: SamplingMode = mode  # type: ignore[assignment]
    return sampling_spec(mode, sigma_n, default, steps=steps, guidance=guidance, method=method)
