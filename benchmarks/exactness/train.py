"""Training: the ambient (+ consistency) step, the whole run, the step-cost timing and the sampler."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ambient.core import (
    ConsistencySettings,
    EDMDenoiser,
    ambient_loss,
    consistency_loss,
    generate,
    posterior_step,
    sample_training_sigmas,
)

from .config import Config, Variant
from .model import make_denoiser


def training_inputs(variant: Variant, x0: Tensor, y: Tensor, sigma_n: float) -> tuple[Tensor, float]:
    """The data a variant sees and the sigma_n its loss is told: only oracle sees clean data."""
    if variant == "oracle":
        return x0, 0.0
    if variant == "naive":
        return y, 0.0
    return y, sigma_n


def lr_at(step: int, cfg: Config) -> float:
    """Short linear warm-up, then cosine decay to zero."""
    warmup = max(1, cfg.steps // 50)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def consistency_scale(step: int, cfg: Config) -> float:
    """The curriculum: the share of the consistency weight applied at ``step`` (1 without a ramp)."""
    if cfg.weight_ramp <= 0:
        return 1.0
    return min(1.0, (step + 1) / max(1.0, cfg.weight_ramp * cfg.steps))


def level_weights(sigma_t: Tensor, sigma_n: Tensor, power: float) -> Tensor:
    """(sigma_t / sigma_n)^-power per row, normalised to mean 1 (ones where sigma_n = 0 or power = 0)."""
    if power == 0 or not bool((sigma_n > 0).all()):
        return torch.ones_like(sigma_t)
    w = (sigma_t / sigma_n) ** (-power)
    return w / w.mean()


@torch.no_grad()
def below_anchors(
    model: EDMDenoiser,
    y: Tensor,
    sigma_n: Tensor,
    settings: ConsistencySettings,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Anchors below sigma_n: t log-uniform in (max(s_min, sigma_n / 20), sigma_n) and x_t drawn by the
    model's own posterior sampler (``settings.steps`` steps, no grad) started at (y, sigma_n)."""
    lo = torch.clamp(sigma_n / 20, min=settings.s_min).clamp(max=sigma_n * 0.5)
    u = torch.rand(sigma_n.shape, generator=gen)
    t = torch.exp(lo.log() + u * (sigma_n.log() - lo.log()))
    x = y
    for k in range(settings.steps):
        cur = sigma_n * (t / sigma_n) ** (k / settings.steps)
        nxt = sigma_n * (t / sigma_n) ** ((k + 1) / settings.steps)
        x = posterior_step(x, model(x, cur), cur, nxt, torch.randn(x.shape, generator=gen))
    return x, t


@dataclass
class TrainCost:
    """Per training step: CPU seconds of this process (robust to other jobs on the machine) and wall seconds."""

    cpu_per_step: float
    wall_per_step: float


def training_step(
    model: EDMDenoiser,
    opt: torch.optim.Optimizer,
    data: Tensor,
    sigma_n: Tensor,
    cfg: Config,
    gen: torch.Generator,
    step: int,
    settings: ConsistencySettings | None,
) -> None:
    """One optimizer step of the ambient loss, plus the consistency loss when ``settings`` is active."""
    y = data[torch.randint(data.shape[0], (cfg.batch,), generator=gen)]
    sigma_t = sample_training_sigmas(sigma_n, generator=gen)
    noise = torch.randn(y.shape, generator=gen)
    per_row = ambient_loss(
        model, y, sigma_n, sigma_t, noise, weighting=cfg.weighting, sigma_data=cfg.sigma_data
    )
    if cfg.level_weight_power != 0:
        per_row = per_row * level_weights(sigma_t, sigma_n, cfg.level_weight_power)
    loss = per_row.mean()
    if settings is not None and settings.active(step):
        weight = settings.weight * consistency_scale(step, cfg)
        anchor_y, anchor_sn = y, sigma_n
        moved = round(cfg.below_anchor * y.shape[0])
        if moved > 0:  # these rows anchor at (x_t, t) below sigma_n instead of (y, sigma_n)
            x_t, t = below_anchors(model, y[:moved], sigma_n[:moved], settings, gen)
            anchor_y = torch.cat([x_t, y[moved:]])
            anchor_sn = torch.cat([t, sigma_n[moved:]])
        loss = loss + weight * consistency_loss(model, anchor_y, anchor_sn, settings, generator=gen)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def train(
    variant: Variant,
    data: Tensor,
    loss_sigma_n: float,
    cfg: Config,
    seed: int,
    settings: ConsistencySettings | None = None,
) -> tuple[EDMDenoiser, TrainCost]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = make_denoiser(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    chosen = (settings or cfg.consistency) if variant == "consistency" else None
    sigma_n = torch.full((cfg.batch,), loss_sigma_n)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        training_step(model, opt, data, sigma_n, cfg, gen, step, chosen)
    steps = max(1, cfg.steps)
    cost = TrainCost((time.process_time() - cpu0) / steps, (time.perf_counter() - wall0) / steps)
    return model.eval(), cost


def interleaved_step_cost(
    y: Tensor, sigma_n: float, settings: ConsistencySettings, cfg: Config, rounds: int = 30, block: int = 8
) -> float:
    """CPU time of a training step with ``settings`` over that of the plain ambient step, timed in
    alternating blocks of ``block`` steps (a multiple of ``every``, so each block runs the consistency
    loss block / every times) on one model: both sides see the same machine load, which whole-run timings
    on a shared machine do not. The median over ``rounds`` block pairs (after one warm-up pair)."""
    torch.manual_seed(cfg.seed + 21)
    gen = torch.Generator().manual_seed(cfg.seed + 21)
    model = make_denoiser(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr * 0.1)
    sn = torch.full((cfg.batch,), sigma_n)

    def timed(chosen: ConsistencySettings | None) -> float:
        start = time.process_time()
        for step in range(block):
            training_step(model, opt, y, sn, cfg, gen, step, chosen)
        return time.process_time() - start

    ratios = []
    for i in range(rounds + 1):
        if i % 2:  # alternate the order so that a drift in load favours neither side
            plain, extra = timed(None), timed(settings)
        else:
            extra, plain = timed(settings), timed(None)
        if i > 0:
            ratios.append(extra / plain)
    ratios.sort()
    return ratios[len(ratios) // 2]


def draw(model: EDMDenoiser, variant: Variant, sigma_n: float, cfg: Config, seed: int) -> Tensor:
    mode = "early_stop" if variant == "early_stop" else "full"
    gen = torch.Generator().manual_seed(seed)
    return generate(
        model,
        (cfg.eval_samples, cfg.dim),
        mode=mode,
        sigma_n=sigma_n,
        num_steps=cfg.sample_steps,
        generator=gen,
    )
