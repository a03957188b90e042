"""The consistency loss: make the network agree with its own reverse sampler below sigma_n.

For an anchor (x_t, t), run the model's posterior sampler from t down to s < t twice,
independently and without gradient, and penalise mean((h(x_s^1, s) - a) * (h(x_s^2, s) - a)) with
a = h(x_t, t): an unbiased estimate of || E[h(x_s, s) | x_t] - h(x_t, t) ||^2, which is zero for the
exact denoiser (the martingale property of E[x0 | x_sigma]).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ._checks import flat_mean, per_sample
from .ambient import Denoiser, add_ambient_noise
from .samplers import posterior_step

# One rule per knob: (check, what it must be). ConsistencySettings applies them in __post_init__ and
# the training config's section applies the same rules field by field (so its errors name the field).
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "weight": (lambda v: v >= 0, ">= 0"),
    "steps": (lambda v: v >= 1, ">= 1"),
    "fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "every": (lambda v: v >= 1, ">= 1"),
    "anchor": (lambda v: v in ("data", "above"), "'data' or 'above'"),
    "above_ratio": (lambda v: v > 1, "> 1"),
    "s_distribution": (lambda v: v in ("log_uniform", "near"), "'log_uniform' or 'near'"),
    "s_min": (lambda v: v > 0, "> 0"),
    "near_ratio": (lambda v: 0 < v < 1, "in (0, 1)"),
}


def setting_problem(name: str, value: Any) -> str | None:
    """What is wrong with one consistency knob's value ("must be ..."), or None when it is valid."""
    rule = _RULES.get(name)
    return None if rule is None or rule[0](value) else f"must be {rule[1]}"


def check_setting(name: str, value: Any) -> Any:
    """Validate one consistency knob; returns ``value`` or raises ValueError naming the knob."""
    problem = setting_problem(name, value)
    if problem is not None:
        raise ValueError(f"consistency {name} {problem}, got {value!r}")
    return value


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class ConsistencySettings:
    """Knobs of the consistency loss; its cost is ``fraction`` x about (2 steps + 1) forward passes,
    paid every ``every`` training steps. The defaults are the shipped training defaults (the fine-tuning
    config's ``consistency`` section is built from this class); the reference trial of DESIGN.md used
    steps 4, fraction 1, every 1, s_min 0.002.

    anchor: "data" anchors at t = sigma_n with x_t = y itself (the stored sample; no extra noise);
      "above" draws t log-uniformly in (sigma_n, above_ratio * sigma_n) and noises y up to it.
    s_distribution: "log_uniform" draws s in (min(s_min, t/2), t); "near" draws s / t in
      (near_ratio, 1), short gaps that pin the model down just below the anchor.
    """

    weight: float = field(default=1.0, metadata=_doc("lambda; 0 disables the consistency loss"))
    steps: int = field(default=2, metadata=_doc("posterior sampler steps from t down to s"))
    fraction: float = field(default=0.25, metadata=_doc("share of the noisy rows used (cost knob)"))
    every: int = field(
        default=2, metadata=_doc("run the consistency loss every N optimizer steps (cost knob)")
    )
    anchor: Literal["data", "above"] = field(
        default="data",
        metadata=_doc("data: t = sigma_n, x_t = y; above: t in (sigma_n, above_ratio sigma_n)"),
    )
    above_ratio: float = field(default=2.0, metadata=_doc("anchor 'above': t <= above_ratio * sigma_n"))
    s_distribution: Literal["log_uniform", "near"] = field(
        default="log_uniform",
        metadata=_doc("log_uniform: s in (min(s_min, t/2), t); near: s/t in (near_ratio, 1)"),
    )
    s_min: float = field(default=0.03, metadata=_doc("lower end of the log-uniform s range"))
    near_ratio: float = field(default=0.5, metadata=_doc("s_distribution 'near': smallest s / t"))
    stop_grad_anchor: bool = field(default=True, metadata=_doc("no gradient through the anchor"))

    def __post_init__(self) -> None:
        for name in _RULES:
            check_setting(name, getattr(self, name))

    def active(self, step: int) -> bool:
        return self.weight > 0 and step % self.every == 0


def _uniform(n: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64).to(like.device)


# Rows whose sigma_n is within this margin of the model's smallest level have no room below it.
FLOOR_MARGIN = 1e-3
# The level of the stand-in row that keeps the forward passes when no row qualifies (weighted 0).
STAND_IN_SIGMA = 1.0


def _select_rows(
    sigma_n: Tensor, fraction: float, sigma_min: float, generator: torch.Generator | None
) -> Tensor:
    """Indices of a random ``fraction`` of the rows that have noise levels below them to extend to:
    sigma_n > 0 (clean rows need no extension) and above the model's smallest level ``sigma_min``."""
    noisy = ((sigma_n > 0) & (sigma_n > sigma_min * (1 + FLOOR_MARGIN))).nonzero().flatten()
    if noisy.numel() == 0:
        return noisy
    keep = max(1, math.ceil(fraction * noisy.numel()))
    order = torch.randperm(noisy.numel(), generator=generator)[:keep].to(noisy.device)
    return noisy[order]


def _anchor(
    settings: ConsistencySettings, y: Tensor, sn: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """The anchor level t and point x_t of each row."""
    if settings.anchor == "data":
        return sn, y
    u = _uniform(sn.shape[0], y, generator).to(y.dtype)
    t = sn * torch.exp(u * math.log(settings.above_ratio))
    noise = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
    return t, add_ambient_noise(y, sn, t, noise)


def _target_levels(
    settings: ConsistencySettings, t: Tensor, sigma_min: float, generator: torch.Generator | None
) -> Tensor:
    """The level s < t each chain runs down to, never below the model's smallest level ``sigma_min``."""
    u = _uniform(t.shape[0], t, generator).to(t.dtype)
    floor = torch.full_like(t, sigma_min)
    if settings.s_distribution == "log_uniform":
        lo = torch.maximum(torch.minimum(torch.full_like(t, settings.s_min), t / 2), floor)
        s = torch.exp(lo.log() + u * (t.log() - lo.log()))
    else:
        lo = torch.maximum(t * settings.near_ratio, floor)
        s = lo + u * (t - lo)
    return torch.maximum(torch.minimum(s, t * (1 - 1e-4)), floor)


def _two_chains(
    denoiser: Denoiser,
    x_t: Tensor,
    anchor: Tensor,
    t: Tensor,
    s: Tensor,
    steps: int,
    cond: dict,
    generator: torch.Generator | None,
) -> Tensor:
    """h(x_s, s) at the end of two independent posterior chains from (x_t, t) to s, in one doubled
    batch (rows [:n] and [n:]); the first step reuses the anchor's prediction."""
    n = x_t.shape[0]
    cond2 = {
        k: (torch.cat([v, v]) if torch.is_tensor(v) and v.shape[:1] == (n,) else v) for k, v in cond.items()
    }
    x = torch.cat([x_t, x_t])
    t2, s2 = torch.cat([t, t]), torch.cat([s, s])
    ratio = s2 / t2
    with torch.no_grad():
        x0_hat = torch.cat([anchor, anchor]).detach()
        for k in range(steps):
            cur = t2 * ratio ** (k / steps)
            nxt = t2 * ratio ** ((k + 1) / steps)
            if k > 0:
                x0_hat = denoiser(x, cur, **cond2)
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x = posterior_step(x, x0_hat, cur, nxt, noise)
    return denoiser(x, s2, **cond2)


def consistency_loss(
    denoiser: Denoiser,
    y: Tensor,
    sigma_n: Tensor | float,
    settings: ConsistencySettings = ConsistencySettings(),
    *,
    cond: dict | None = None,
    generator: torch.Generator | None = None,
    sigma_min: float = 0.0,
) -> Tensor:
    """Mean consistency loss over the selected rows (a scalar; 0 when no row has sigma_n > sigma_min).

    ``cond`` holds per-sample conditioning tensors (batch first); they are sub-selected with the rows.
    ``sigma_min`` is the model's smallest noise level (SDXL: 0.029): no chain goes below it.
    The loss is not multiplied by ``settings.weight``: the caller adds weight * loss.

    The number of denoiser calls never depends on the data (1 + steps, whatever the rows): when no
    row qualifies, the passes run on a stand-in row and the result is weighted 0. Ranks of a sharded
    model (ZeRO-3) gather parameters in every forward pass, so a rank that skipped them would hang
    the others.
    """
    batch = y.shape[0]
    sn_all = per_sample(sigma_n, batch, y, "sigma_n")
    rows = _select_rows(sn_all, settings.fraction, sigma_min, generator)
    weight = 1.0
    if rows.numel() == 0:
        rows, weight = torch.zeros(1, dtype=torch.long, device=y.device), 0.0
        sn = torch.full((1,), max(STAND_IN_SIGMA, 4 * sigma_min), dtype=y.dtype, device=y.device)
    else:
        sn = sn_all[rows]
    y = y[rows]
    cond = {
        k: (v[rows] if torch.is_tensor(v) and v.shape[:1] == (batch,) else v) for k, v in (cond or {}).items()
    }
    t, x_t = _anchor(settings, y, sn, generator)
    s = _target_levels(settings, t, sigma_min, generator)
    if settings.stop_grad_anchor:
        with torch.no_grad():
            anchor = denoiser(x_t, t, **cond)
    else:
        anchor = denoiser(x_t, t, **cond)
    h = _two_chains(denoiser, x_t, anchor, t, s, settings.steps, cond, generator)
    n = x_t.shape[0]
    return weight * flat_mean((h[:n] - anchor) * (h[n:] - anchor)).mean()
