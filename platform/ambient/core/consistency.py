"""The consistency loss: make the network agree with its own reverse sampler below sigma_n.

For an anchor (x_t, t), run the model's posterior sampler from t down to s < t twice,
independently and without gradient, and penalise mean((h(x_s^1, s) - a) * (h(x_s^2, s) - a)) with
a = h(x_t, t): an unbiased estimate of || E[h(x_s, s) | x_t] - h(x_t, t) ||^2, which is zero for the
exact denoiser (the martingale property of E[x0 | x_sigma]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ._checks import flat_mean, per_sample
from .ambient import Denoiser, add_ambient_noise
from .samplers import posterior_step


@dataclass(frozen=True)
class ConsistencySettings:
    """Knobs of the consistency loss; its cost is ``fraction`` x about (2 steps + 1) forward passes,
    paid every ``every`` training steps.

    anchor: "data" anchors at t = sigma_n with x_t = y itself (the stored sample; no extra noise);
      "above" draws t log-uniformly in (sigma_n, above_ratio * sigma_n) and noises y up to it.
    s_distribution: "log_uniform" draws s in (min(s_min, t/2), t); "near" draws s / t in
      (near_ratio, 1), short gaps that pin the model down just below the anchor.
    """

    weight: float = 1.0
    steps: int = 4
    fraction: float = 1.0
    every: int = 1
    anchor: Literal["data", "above"] = "data"
    above_ratio: float = 2.0
    s_distribution: Literal["log_uniform", "near"] = "log_uniform"
    s_min: float = 0.002
    near_ratio: float = 0.5
    stop_grad_anchor: bool = True

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"consistency weight must be >= 0, got {self.weight}")
        if self.steps < 1:
            raise ValueError(f"consistency steps must be >= 1, got {self.steps}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"consistency fraction must be in (0, 1], got {self.fraction}")
        if self.every < 1:
            raise ValueError(f"consistency every must be >= 1, got {self.every}")
        if self.anchor not in ("data", "above"):
            raise ValueError(f"consistency anchor must be 'data' or 'above', got {self.anchor!r}")
        if self.above_ratio <= 1:
            raise ValueError(f"consistency above_ratio must be > 1, got {self.above_ratio}")
        if self.s_distribution not in ("log_uniform", "near"):
            raise ValueError(f"s_distribution must be 'log_uniform' or 'near', got {self.s_distribution!r}")
        if self.s_min <= 0:
            raise ValueError(f"consistency s_min must be > 0, got {self.s_min}")
        if not 0 < self.near_ratio < 1:
            raise ValueError(f"consistency near_ratio must be in (0, 1), got {self.near_ratio}")

    def active(self, step: int) -> bool:
        return self.weight > 0 and step % self.every == 0


def _uniform(n: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64).to(like.device)


def _select_rows(sigma_n: Tensor, fraction: float, generator: torch.Generator | None) -> Tensor:
    """Indices of a random ``fraction`` of the noisy rows (sigma_n > 0; clean rows need no extension)."""
    noisy = (sigma_n > 0).nonzero().flatten()
    if noisy.numel() == 0:
        return noisy
    keep = max(1, math.ceil(fraction * noisy.numel()))
    order = torch.randperm(noisy.numel(), generator=generator)[:keep].to(noisy.device)
    return noisy[order]


def consistency_loss(
    denoiser: Denoiser,
    y: Tensor,
    sigma_n: Tensor | float,
    settings: ConsistencySettings = ConsistencySettings(),
    *,
    cond: dict | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mean consistency loss over the selected rows (a scalar; 0 when no row has sigma_n > 0).

    ``cond`` holds per-sample conditioning tensors (batch first); they are sub-selected with the rows.
    The loss is not multiplied by ``settings.weight``: the caller adds weight * loss.
    """
    batch = y.shape[0]
    sn_all = per_sample(sigma_n, batch, y, "sigma_n")
    rows = _select_rows(sn_all, settings.fraction, generator)
    if rows.numel() == 0:
        return y.new_zeros(())
    y = y[rows]
    sn = sn_all[rows]
    cond = {
        k: (v[rows] if torch.is_tensor(v) and v.shape[:1] == (batch,) else v) for k, v in (cond or {}).items()
    }
    n = rows.numel()

    if settings.anchor == "data":
        t, x_t = sn, y
    else:
        u = _uniform(n, y, generator).to(y.dtype)
        t = sn * torch.exp(u * math.log(settings.above_ratio))
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
        x_t = add_ambient_noise(y, sn, t, noise)

    u = _uniform(n, y, generator).to(y.dtype)
    if settings.s_distribution == "log_uniform":
        lo = torch.minimum(torch.full_like(t, settings.s_min), t / 2)
        s = torch.exp(lo.log() + u * (t.log() - lo.log()))
    else:
        s = t * (settings.near_ratio + u * (1 - settings.near_ratio))
    s = torch.minimum(s, t * (1 - 1e-4))

    if settings.stop_grad_anchor:
        with torch.no_grad():
            anchor = denoiser(x_t, t, **cond)
    else:
        anchor = denoiser(x_t, t, **cond)

    # Two independent chains in one doubled batch; the first step reuses the anchor's prediction.
    cond2 = {
        k: (torch.cat([v, v]) if torch.is_tensor(v) and v.shape[:1] == (n,) else v) for k, v in cond.items()
    }
    x = torch.cat([x_t, x_t])
    t2, s2 = torch.cat([t, t]), torch.cat([s, s])
    ratio = s2 / t2
    with torch.no_grad():
        x0_hat = torch.cat([anchor, anchor]).detach()
        for k in range(settings.steps):
            cur = t2 * ratio ** (k / settings.steps)
            nxt = t2 * ratio ** ((k + 1) / settings.steps)
            if k > 0:
                x0_hat = denoiser(x, cur, **cond2)
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x = posterior_step(x, x0_hat, cur, nxt, noise)
    h = denoiser(x, s2, **cond2)
    h1, h2 = h[:n], h[n:]
    return flat_mean((h1 - anchor) * (h2 - anchor)).mean()
