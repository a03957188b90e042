"""Exactness benchmark: does ambient diffusion learn the *clean* distribution from noisy data?

The data is a mixture of Gaussians in R^d, where the clean law and E[x0 | x_sigma] are known in closed
form. Four variants share one small network (an MLP behind EDM preconditioning), one budget (steps,
batch, learning rate) and one sampler; only the loss and where sampling stops differ:

- oracle:      trained on the clean data (ambient_loss with sigma_n = 0), sampled to sigma = 0;
- naive:       trained on the noisy data as if it were clean, sampled to sigma = 0;
- early_stop:  ambient_loss on the noisy data, sampled down to sigma_n and finished with one Tweedie step;
- consistency: ambient_loss + lambda * consistency_loss on the noisy data, sampled to sigma = 0;
- em_reference: no network: a K-component full-covariance Gaussian mixture fitted to the noisy data by
  EM with every covariance constrained to >= sigma_n^2 I, then sigma_n^2 I subtracted from each
  covariance. It knows the family of the truth, so it shows how much of the gap to the oracle is
  missing information (the noise) and how much is the method.

``--settings-rows`` adds consistency rows with named ConsistencySettings (the shipped defaults, the
benchmark recipe, one-knob moves); every trained row records the CPU seconds per training step and a
held-out validation ambient loss (levels above sigma_n), the only quality signal a user has.

Its levers are options whose defaults are the benchmark as published: --steps, --hidden, --depth,
--noise-freqs, --noise-embedding, --weight-ramp (consistency-weight curriculum), --level-weight-power
(per-level ambient weighting) and --below-anchor (consistency anchors below sigma_n); results in
docs/benchmarks.md, "Levers at sigma_n = 0.2".

Metrics: the sliced Wasserstein-2 distance of generated samples to fresh clean samples (next to the
clean-vs-clean floor), and the denoiser's mean squared error against the analytic posterior mean at
noise levels below and above sigma_n. Every loss and sampler comes from ``ambient.core``.

    python benchmarks/exactness.py --dim 2 --components 8 --sigma-n 0.2 0.5 1.0 --json out.json --plot out.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ambient.core import (
    ConsistencySettings,
    EDMDenoiser,
    GaussianMixture,
    ambient_loss,
    consistency_loss,
    corrupt,
    generate,
    posterior_step,
    sample_training_sigmas,
)

VARIANTS = ("oracle", "naive", "early_stop", "consistency", "em_reference")
Variant = Literal["oracle", "naive", "early_stop", "consistency", "em_reference"]
TRAINED = ("oracle", "naive", "early_stop", "consistency")

# The consistency loss as the platform ships it (the fine-tuning config's defaults) and as this benchmark
# measured it first (DESIGN.md section 2's reference trial).
SHIPPED = ConsistencySettings()
RECIPE = ConsistencySettings(weight=10.0, steps=4, fraction=1.0, every=1, s_min=0.002)
# Named rows for --settings-rows: the two above and one-knob moves away from the shipped defaults.
SETTINGS_ROWS: dict[str, ConsistencySettings] = {
    "shipped": SHIPPED,
    "recipe": RECIPE,
    "every=1": replace(SHIPPED, every=1),
    "every=4": replace(SHIPPED, every=4),
    "fraction=0.5": replace(SHIPPED, fraction=0.5),
    "fraction=1": replace(SHIPPED, fraction=1.0),
    "steps=4": replace(SHIPPED, steps=4),
    "weight=10": replace(SHIPPED, weight=10.0),
    "s_min=0.002": replace(SHIPPED, s_min=0.002),
}


@dataclass(frozen=True)
class Config:
    """Everything that defines one benchmark run; identical for the four variants."""

    dim: int = 2
    components: int = 8
    sigma_ns: tuple[float, ...] = (0.2, 0.5, 1.0)
    seed: int = 0
    # Seeds the training and the sampler (and EM's sampling) only: same data, another training run.
    train_seed: int = 0
    # Data: means uniform in [-scale, scale]^d, isotropic std per component: one value for every
    # component, or one per component (a second data shape: clusters of different widths).
    scale: float = 1.0
    std: float | tuple[float, ...] = 0.1
    sigma_data: float = 0.5
    train_size: int = 50_000
    # Budget (the same for every variant).
    steps: int = 4000
    batch: int = 512
    lr: float = 2e-3
    hidden: int = 128
    depth: int = 3
    noise_freqs: int = 8
    # Levers (the defaults are the published benchmark). How the network sees c_noise:
    # "fourier": sin/cos of c_noise at pi 2^k / 4 (k < noise_freqs) next to the input of the first layer;
    # "fourier_every_layer": the same features next to the input of every layer;
    # "smooth": c_noise itself and sin/cos at pi 2^k / 4 for k < min(noise_freqs, 3) (up to pi), first layer.
    noise_embedding: Literal["fourier", "fourier_every_layer", "smooth"] = "fourier"
    # The consistency weight ramps linearly from 0 to its value over this share of the steps (0: no ramp).
    weight_ramp: float = 0.0
    # Per-level weighting of the ambient loss of the noisy variants: each row's loss times
    # (sigma_t / sigma_n)^-p, normalised to mean 1 over the batch (p > 0 favours levels near sigma_n).
    level_weight_power: float = 0.0
    # Share of the consistency rows anchored below sigma_n: t log-uniform in (max(s_min, sigma_n / 20),
    # sigma_n), x_t drawn by the model's own posterior sampler (no grad, ``steps`` steps) from (y, sigma_n).
    below_anchor: float = 0.0
    weighting: Literal["none", "x0"] = "x0"
    variants: tuple[str, ...] = VARIANTS[1:4]  # besides the oracle, which is always trained
    # Extra consistency rows, named in SETTINGS_ROWS (each trained like "consistency" with its settings).
    settings_rows: tuple[str, ...] = ()
    # Anchor at t = sigma_n with x_t = y, s log-uniform in (0.002, sigma_n), 4 posterior steps, stop-grad
    # anchor (DESIGN.md section 2); lambda = 10 because the x0-weighted ambient loss is in EDM units, which
    # are larger than the consistency loss's plain x0 units.
    consistency: ConsistencySettings = field(
        default_factory=lambda: ConsistencySettings(weight=10.0, steps=4, fraction=1.0, every=1, s_min=0.002)
    )
    # Block pairs of the interleaved step-cost timing of each consistency row (0: skip it).
    cost_rounds: int = 30
    # EM reference: restarts (best log-likelihood kept) and the iteration cap of each.
    em_restarts: int = 3
    em_iters: int = 300
    # Held-out validation ambient loss: fresh clean draws noised with sigma_n (noise of its own seed),
    # evaluated at these multiples of sigma_n with fixed noise, in the run's weighting.
    validation_size: int = 10_000
    validation_levels: tuple[float, ...] = (1.5, 2.0, 3.0, 5.0)
    # Evaluation.
    eval_samples: int = 10_000
    sample_steps: int = 32
    projections: int = 256
    error_points: int = 4000
    error_levels: int = 4
    floor_pairs: int = 4
    # One thread: the MLP is too small to gain from more, and a shared 2-core machine loses to oversubscription.
    threads: int = 1


# ---- model -----------------------------------------------------------------------------------------


class MLP(nn.Module):
    """F(x_scaled, c_noise): an MLP on the input concatenated with features of c_noise (``embedding``:
    see Config.noise_embedding; "fourier", the default, is the network every published row used)."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        depth: int,
        freqs: int = 8,
        embedding: Literal["fourier", "fourier_every_layer", "smooth"] = "fourier",
    ) -> None:
        super().__init__()
        self.embedding = embedding
        count = min(freqs, 3) if embedding == "smooth" else freqs
        self.register_buffer("freqs", torch.pi * 2.0 ** torch.arange(count, dtype=torch.float32) / 4)
        emb = 2 * count + (1 if embedding == "smooth" else 0)
        extra = emb if embedding == "fourier_every_layer" else 0
        layers: list[nn.Module] = []
        width = dim + emb
        for _ in range(depth):
            layers.append(nn.Linear(width, hidden))
            width = hidden + extra
        self.hidden_layers = nn.ModuleList(layers)
        self.out = nn.Linear(width, dim)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        c = c_noise.reshape(-1, 1)
        angles = c * self.freqs
        feats = [angles.sin(), angles.cos()] + ([c] if self.embedding == "smooth" else [])
        e = torch.cat(feats, dim=1)
        h = torch.cat([x, e], dim=1)
        for layer in self.hidden_layers:
            h = self.act(layer(h))
            if self.embedding == "fourier_every_layer":
                h = torch.cat([h, e], dim=1)
        return self.out(h)


def make_denoiser(cfg: Config) -> EDMDenoiser:
    net = MLP(cfg.dim, cfg.hidden, cfg.depth, cfg.noise_freqs, cfg.noise_embedding)
    return EDMDenoiser(net, sigma_data=cfg.sigma_data)


# ---- data ------------------------------------------------------------------------------------------


def make_mixture(cfg: Config) -> GaussianMixture:
    if isinstance(cfg.std, float):
        return GaussianMixture.random(cfg.dim, cfg.components, scale=cfg.scale, std=cfg.std, seed=cfg.seed)
    if len(cfg.std) != cfg.components:
        raise ValueError(f"--std: got {len(cfg.std)} values for {cfg.components} components (give 1 or K)")
    # The same means as the one-std mixture of this seed; only the widths differ.
    gm = GaussianMixture.random(cfg.dim, cfg.components, scale=cfg.scale, std=1.0, seed=cfg.seed)
    return GaussianMixture(gm.means, torch.tensor(cfg.std, dtype=gm.means.dtype), gm.weights)


def largest_std(cfg: Config) -> float:
    return cfg.std if isinstance(cfg.std, float) else max(cfg.std)


def clean_samples(gm: GaussianMixture, n: int, seed: int) -> Tensor:
    return gm.sample(n, generator=torch.Generator().manual_seed(seed)).float()


def noisy_training_set(x0: Tensor, sigma_n: float, seed: int) -> Tensor:
    """y = x0 + sigma_n z with z frozen per sample id (never redrawn)."""
    return corrupt(x0, sigma_n, range(x0.shape[0]), seed)


# ---- training --------------------------------------------------------------------------------------


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


# ---- EM reference --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FullMixture:
    """sum_k w_k N(mean_k, cov_k), float64; covariances held as eigenpairs cov_k = V diag(lam) V^T."""

    weights: Tensor  # (K,)
    means: Tensor  # (K, d)
    eigvals: Tensor  # (K, d)
    eigvecs: Tensor  # (K, d, d), columns are eigenvectors

    @staticmethod
    def from_covariances(weights: Tensor, means: Tensor, covs: Tensor, floor: float) -> FullMixture:
        """Eigenvalues of each covariance floored at ``floor`` (the projection onto cov >= floor I)."""
        lam, vec = torch.linalg.eigh(0.5 * (covs + covs.transpose(1, 2)))
        return FullMixture(weights, means, lam.clamp(min=floor), vec)

    @property
    def covariances(self) -> Tensor:
        return self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(1, 2)

    def _joint(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """Coordinates z of x - mean_k in each eigenbasis (B, K, d), the variances lam + sigma^2 there, and
        log w_k + log N(x; mean_k, cov_k + sigma^2 I) up to the constant -d/2 log(2 pi), (B, K)."""
        x64 = x.double()
        s2 = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1) ** 2  # (B or 1, 1, 1)
        z = torch.einsum("bkd,kde->bke", x64[:, None, :] - self.means[None], self.eigvecs)
        var = self.eigvals[None] + s2  # (B, K, d)
        logp = self.weights.clamp(min=1e-300).log()[None] - 0.5 * ((z**2 / var) + var.log()).sum(-1)
        return z, var, logp

    def log_likelihood(self, x: Tensor) -> float:
        """Mean log-density of the rows of x."""
        logp = self._joint(x, 0.0)[2]
        return float(torch.logsumexp(logp, dim=1).mean() - 0.5 * x.shape[1] * math.log(2 * math.pi))

    def posterior_mean(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """E[x0 | x0 + sigma eps = x] for x0 from this mixture."""
        z, var, logp = self._joint(x, sigma)
        logr = torch.log_softmax(logp, dim=1)
        shrunk = torch.einsum("kde,bke->bkd", self.eigvecs, (self.eigvals[None] / var) * z)
        return (logr.exp()[..., None] * (self.means[None] + shrunk)).sum(1).to(x.dtype)

    def __call__(self, x: Tensor, sigma: Tensor, **_: object) -> Tensor:
        """A denoiser: the posterior mean (so the metrics and the ambient loss take it like a model)."""
        return self.posterior_mean(x, sigma)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        scaled = torch.einsum("nde,ne->nd", self.eigvecs[comp], self.eigvals[comp].sqrt() * eps)
        return self.means[comp] + scaled


def _kmeans_pp(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to the squared distance."""
    centres = [x[torch.randint(x.shape[0], (1,), generator=gen)].squeeze(0)]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centres)).min(dim=1).values ** 2
        centres.append(x[torch.multinomial(d2 / d2.sum(), 1, generator=gen)].squeeze(0))
    return torch.stack(centres)


def fit_em(
    y: Tensor,
    components: int,
    noise_var: float,
    *,
    restarts: int = 3,
    iters: int = 300,
    tol: float = 1e-6,
    seed: int = 0,
) -> FullMixture:
    """Maximum-likelihood K-component mixture of y by EM with every covariance >= noise_var I.

    Flooring the eigenvalues of the weighted sample covariance at noise_var is the exact constrained M
    step (it maximises the Gaussian likelihood over cov >= noise_var I), so each iteration still raises
    the likelihood. The best of ``restarts`` k-means++ starts is kept.
    """
    x = y.double()
    n, d = x.shape
    floor = max(noise_var, 1e-8)
    gen = torch.Generator().manual_seed(seed)
    best: tuple[float, FullMixture] | None = None
    for _ in range(restarts):
        spread = torch.cov(x.T).reshape(d, d)
        covs = spread.expand(components, d, d).clone()
        weights = torch.full((components,), 1.0 / components, dtype=torch.float64)
        mix = FullMixture.from_covariances(weights, _kmeans_pp(x, components, gen), covs, floor)
        previous = -math.inf
        for _ in range(iters):
            logp = mix._joint(x, 0.0)[2]
            current = float(torch.logsumexp(logp, dim=1).mean())  # of the current parameters
            if current - previous < tol:
                break
            previous = current
            r = torch.softmax(logp, dim=1)  # (n, K)
            nk = r.sum(0) + 1e-12
            means = (r.T @ x) / nk[:, None]
            covs = (
                torch.stack(
                    [((x - means[k]) * r[:, k : k + 1]).T @ (x - means[k]) for k in range(components)]
                )
                / nk[:, None, None]
            )
            mix = FullMixture.from_covariances(nk / n, means, covs, floor)
        score = mix.log_likelihood(x)
        if best is None or score > best[0]:
            best = (score, mix)
    assert best is not None
    return best[1]


def deconvolve(noisy: FullMixture, sigma_n: float, floor: float = 1e-8) -> FullMixture:
    """The clean mixture: sigma_n^2 subtracted from every covariance eigenvalue (floored at ``floor``)."""
    return replace(noisy, eigvals=(noisy.eigvals - sigma_n**2).clamp(min=floor))


def em_reference(y: Tensor, sigma_n: float, cfg: Config) -> FullMixture:
    noisy = fit_em(
        y, cfg.components, sigma_n**2, restarts=cfg.em_restarts, iters=cfg.em_iters, seed=cfg.seed + 9
    )
    return deconvolve(noisy, sigma_n)


# ---- metrics ---------------------------------------------------------------------------------------


def sliced_w2(a: Tensor, b: Tensor, projections: int, seed: int) -> float:
    """Sliced Wasserstein-2: sqrt of the mean over random directions of W2^2 of the 1-D projections."""
    n = min(a.shape[0], b.shape[0])
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa = (a[:n].double() @ dirs).sort(dim=0).values
    pb = (b[:n].double() @ dirs).sort(dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def error_grids(sigma_n: float, levels: int) -> tuple[list[float], list[float]]:
    """Log-spaced noise levels strictly below sigma_n (down to sigma_n / 20) and above it (up to 4 sigma_n)."""
    below = torch.logspace(math.log10(sigma_n / 20), math.log10(sigma_n * 0.8), levels).tolist()
    above = torch.logspace(math.log10(sigma_n * 1.25), math.log10(sigma_n * 4), levels).tolist()
    return below, above


Denoise = Callable[..., Tensor]  # (x, sigma per row) -> x0_hat: a network or FullMixture


@torch.no_grad()
def denoiser_error(model: Denoise, gm: GaussianMixture, sigmas: Sequence[float], n: int, seed: int) -> float:
    """Mean over ``sigmas`` of E || h(x_sigma, sigma) - E[x0 | x_sigma] ||^2 / d on fresh clean x0."""
    gen = torch.Generator().manual_seed(seed)
    errors = []
    for sigma in sigmas:
        x = clean_samples(gm, n, seed + 1) + sigma * torch.randn(n, gm.dim, generator=gen)
        truth = gm.posterior_mean(x.double(), sigma).float()
        pred = model(x, torch.full((n,), sigma))
        errors.append(float(((pred - truth) ** 2).mean()))
    return sum(errors) / len(errors)


def validation_set(gm: GaussianMixture, sigma_n: float, cfg: Config) -> Tensor:
    """Held-out noisy data: clean draws and noise that training never sees (their own seeds)."""
    x0 = clean_samples(gm, cfg.validation_size, cfg.seed + 11)
    return noisy_training_set(x0, sigma_n, cfg.seed + 12)


@torch.no_grad()
def validation_loss(model: Denoise, y_val: Tensor, sigma_n: float, cfg: Config) -> float:
    """Mean held-out ambient loss over the fixed levels ``validation_levels`` x sigma_n (fixed noise)."""
    gen = torch.Generator().manual_seed(cfg.seed + 13)
    losses = []
    for ratio in cfg.validation_levels:
        noise = torch.randn(y_val.shape, generator=gen)
        loss = ambient_loss(
            model, y_val, sigma_n, ratio * sigma_n, noise, weighting=cfg.weighting, sigma_data=cfg.sigma_data
        )
        losses.append(float(loss.mean()))
    return sum(losses) / len(losses)


# ---- one run ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    dim: int
    components: int
    sigma_n: float
    variant: str
    sw2: float
    denoiser_error_below: float
    denoiser_error_above: float
    seconds: float
    samples: Tensor = field(repr=False)
    # The row's name: the variant, or "consistency[<settings row>]".
    label: str = ""
    # CPU / wall seconds per training step (None for the untrained em_reference).
    step_cpu_seconds: float | None = None
    step_wall_seconds: float | None = None
    validation_loss: float | None = None
    # CPU time per step / plain ambient step, timed in interleaved blocks (consistency rows only).
    step_cost_interleaved: float | None = None
    settings: dict | None = None  # the ConsistencySettings of a consistency row

    def record(self) -> dict:
        out = asdict(self)
        out.pop("samples")
        return out


@dataclass
class Trained:
    model: Denoise
    samples: Tensor
    seconds: float
    cost: TrainCost | None = None


def train_and_draw(
    variant: Variant,
    x0: Tensor,
    y: Tensor,
    sigma_n: float,
    cfg: Config,
    settings: ConsistencySettings | None = None,
) -> Trained:
    start = time.perf_counter()
    if variant == "em_reference":
        mixture = em_reference(y, sigma_n, cfg)
        gen = torch.Generator().manual_seed(cfg.seed + 2 + 1000 * cfg.train_seed)
        samples = mixture.sample(cfg.eval_samples, gen).float()
        return Trained(mixture, samples, time.perf_counter() - start)
    data, loss_sigma_n = training_inputs(variant, x0, y, sigma_n)
    run_seed = cfg.seed + 1000 * cfg.train_seed
    model, cost = train(variant, data, loss_sigma_n, cfg, seed=run_seed + 1, settings=settings)
    samples = draw(model, variant, sigma_n, cfg, seed=run_seed + 2)
    return Trained(model, samples, time.perf_counter() - start, cost)


def evaluate(
    variant: Variant,
    trained: Trained,
    gm: GaussianMixture,
    sigma_n: float,
    cfg: Config,
    label: str | None = None,
    settings: ConsistencySettings | None = None,
) -> Outcome:
    reference = clean_samples(gm, cfg.eval_samples, cfg.seed + 3)
    below, above = error_grids(sigma_n, cfg.error_levels)
    return Outcome(
        dim=cfg.dim,
        components=cfg.components,
        sigma_n=sigma_n,
        variant=variant,
        sw2=sliced_w2(trained.samples, reference, cfg.projections, cfg.seed + 4),
        denoiser_error_below=denoiser_error(trained.model, gm, below, cfg.error_points, cfg.seed + 5),
        denoiser_error_above=denoiser_error(trained.model, gm, above, cfg.error_points, cfg.seed + 5),
        seconds=trained.seconds,
        samples=trained.samples,
        label=label or variant,
        step_cpu_seconds=trained.cost.cpu_per_step if trained.cost else None,
        step_wall_seconds=trained.cost.wall_per_step if trained.cost else None,
        validation_loss=validation_loss(trained.model, validation_set(gm, sigma_n, cfg), sigma_n, cfg),
        settings=asdict(settings) if settings is not None else None,
    )


def run_variant(
    variant: Variant,
    gm: GaussianMixture,
    x0: Tensor,
    y: Tensor,
    sigma_n: float,
    cfg: Config,
    label: str | None = None,
    settings: ConsistencySettings | None = None,
) -> Outcome:
    trained = train_and_draw(variant, x0, y, sigma_n, cfg, settings)
    outcome = evaluate(variant, trained, gm, sigma_n, cfg, label, settings)
    if variant == "consistency" and cfg.cost_rounds > 0:
        outcome.step_cost_interleaved = interleaved_step_cost(
            y, sigma_n, settings or cfg.consistency, cfg, rounds=cfg.cost_rounds
        )
    return outcome


def clean_floor(gm: GaussianMixture, cfg: Config) -> float:
    """SW2 between two independent clean sample sets of the evaluation size: the best any model can show.

    A single pair is a noisy estimate, so this is the mean over ``floor_pairs`` independent pairs.
    """
    values = []
    for i in range(cfg.floor_pairs):
        a = clean_samples(gm, cfg.eval_samples, cfg.seed + 100 + 2 * i)
        b = clean_samples(gm, cfg.eval_samples, cfg.seed + 101 + 2 * i)
        values.append(sliced_w2(a, b, cfg.projections, cfg.seed + 4))
    return sum(values) / len(values)


def run_benchmark(
    cfg: Config, progress: Callable[[dict[str, float], list[Outcome]], None] | None = None
) -> tuple[dict[str, float], list[Outcome]]:
    """Every sigma_n: the oracle, the chosen variants, then the settings rows; ``progress`` is called with
    the results so far after each row (so an interrupted run keeps what it finished)."""
    gm = make_mixture(cfg)
    x0 = clean_samples(gm, cfg.train_size, cfg.seed + 7)
    floor = clean_floor(gm, cfg)
    floors: dict[str, float] = {}
    outcomes: list[Outcome] = []
    oracle: Trained | None = None  # never sees sigma_n: trained once, evaluated at every sigma_n

    def done(row: Outcome) -> None:
        outcomes.append(row)
        if progress is not None:
            progress(floors, outcomes)

    for sigma_n in cfg.sigma_ns:
        floors[str(sigma_n)] = floor
        y = noisy_training_set(x0, sigma_n, cfg.seed + 8)
        oracle = oracle or train_and_draw("oracle", x0, y, sigma_n, cfg)
        first = len(outcomes)
        done(evaluate("oracle", oracle, gm, sigma_n, cfg))
        for v in VARIANTS[1:]:
            if v in cfg.variants:
                settings = cfg.consistency if v == "consistency" else None
                done(run_variant(v, gm, x0, y, sigma_n, cfg, settings=settings))
        for name in cfg.settings_rows:
            settings = SETTINGS_ROWS[name]
            done(run_variant("consistency", gm, x0, y, sigma_n, cfg, f"consistency[{name}]", settings))
        print_table(sigma_n, floor, outcomes[first:])
    return floors, outcomes


def cost_table(cfg: Config) -> list[dict]:
    """Only the interleaved step-cost ratio of each consistency row (no training to convergence)."""
    gm = make_mixture(cfg)
    x0 = clean_samples(gm, cfg.train_size, cfg.seed + 7)
    rows = []
    named = [("consistency", cfg.consistency)] if "consistency" in cfg.variants else []
    named += [(f"consistency[{name}]", SETTINGS_ROWS[name]) for name in cfg.settings_rows]
    for sigma_n in cfg.sigma_ns:
        y = noisy_training_set(x0, sigma_n, cfg.seed + 8)
        for label, settings in named:
            ratio = interleaved_step_cost(y, sigma_n, settings, cfg, rounds=cfg.cost_rounds)
            rows.append({"sigma_n": sigma_n, "label": label, "step_cost_interleaved": ratio})
            print(f"sigma_n {sigma_n:g}  {label:<28} step cost {ratio:.2f} x plain", flush=True)
    return rows


# ---- output ----------------------------------------------------------------------------------------


def step_cost_ratio(row: Outcome, rows: Sequence[Outcome]) -> float | None:
    """CPU seconds per training step relative to the plain ambient step (the early_stop row's training)."""
    plain = next((r for r in rows if r.variant == "early_stop" and r.sigma_n == row.sigma_n), None)
    if plain is None or plain.step_cpu_seconds is None or row.step_cpu_seconds is None:
        return None
    return row.step_cpu_seconds / plain.step_cpu_seconds


def print_table(sigma_n: float, floor: float, rows: Sequence[Outcome]) -> None:
    oracle = next(r.sw2 for r in rows if r.variant == "oracle")
    print(f"\nsigma_n = {sigma_n:g}   (clean-vs-clean SW2 floor {floor:.4f})")
    print(
        f"{'row':<28} {'sw2':>8} {'/oracle':>8} {'/floor':>8} {'err<sn':>9} {'err>sn':>9} "
        f"{'val loss':>9} {'cost':>6} {'seconds':>8}"
    )
    for r in rows:
        ratio = step_cost_ratio(r, rows)
        cost = "-" if ratio is None else f"{ratio:.2f}"
        val = "-" if r.validation_loss is None else f"{r.validation_loss:.5f}"
        print(
            f"{r.label:<28} {r.sw2:8.4f} {r.sw2 / oracle:8.2f} {r.sw2 / floor:8.2f} "
            f"{r.denoiser_error_below:9.2e} {r.denoiser_error_above:9.2e} {val:>9} {cost:>6} {r.seconds:8.1f}",
            flush=True,
        )


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot(path: Path, gm: GaussianMixture, outcomes: Sequence[Outcome], cfg: Config) -> None:
    """One row per sigma_n: the truth, then the variants that ran (first two coordinates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = clean_samples(gm, cfg.eval_samples, cfg.seed + 3).numpy()
    per_sigma = max(sum(o.sigma_n == sn for o in outcomes) for sn in cfg.sigma_ns)
    nrows, ncols = len(cfg.sigma_ns), 1 + per_sigma  # truth, then the rows that ran
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3 * nrows), squeeze=False)
    lim = cfg.scale + 4 * largest_std(cfg) + 0.3
    for i, sigma_n in enumerate(cfg.sigma_ns):
        rows = [o for o in outcomes if o.sigma_n == sigma_n]
        panels = [("truth", truth, None)] + [(o.label, o.samples.numpy(), o.sw2) for o in rows]
        for ax in axes[i][len(panels) :]:
            ax.set_axis_off()
        for ax, (name, pts, sw2) in zip(axes[i], panels, strict=False):
            ax.scatter(pts[:, 0], pts[:, 1], s=0.5, alpha=0.3, color="black" if sw2 is None else "tab:blue")
            title = name if sw2 is None else f"{name}  SW2 {sw2:.3f}"
            ax.set_title(f"{title}\nsigma_n={sigma_n:g}", fontsize=9)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


# ---- CLI -------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--components", type=int, default=8)
    p.add_argument(
        "--std",
        type=float,
        nargs="+",
        default=[0.1],
        help="component std: one value for all, or one per component (default 0.1)",
    )
    p.add_argument("--sigma-n", type=float, nargs="+", default=[0.2, 0.5, 1.0])
    p.add_argument("--seed", type=int, default=0, help="seeds everything, the mixture included")
    p.add_argument("--train-seed", type=int, default=0, help="reseeds training and sampling only (same data)")
    p.add_argument(
        "--steps", type=int, default=None, help="training steps per variant (default 4000; quick 800)"
    )
    p.add_argument("--json", type=Path, required=True, help="where to write the results")
    p.add_argument("--plot", type=Path, default=None, help="PNG scatter of the variants (d = 2 only)")
    p.add_argument("--quick", action="store_true", help="smaller budget and evaluation: a smoke run")
    p.add_argument(
        "--weighting", choices=("none", "x0"), default="x0", help="ambient-loss weighting of every variant"
    )
    p.add_argument("--lam", type=float, default=None, help="consistency weight lambda (default 10)")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS[1:],
        default=list(VARIANTS[1:4]),
        help="which variants besides the oracle (always trained) to run (em_reference: opt in)",
    )
    p.add_argument(
        "--settings-rows",
        nargs="+",
        choices=list(SETTINGS_ROWS),
        default=[],
        help="extra consistency rows with named settings (shipped defaults, recipe, one-knob moves)",
    )
    p.add_argument(
        "--consistency-base",
        choices=("recipe", "shipped"),
        default="recipe",
        help="settings of the 'consistency' variant before the knobs below: the benchmark recipe "
        "(weight 10, steps 4, fraction 1, every 1, s_min 0.002) or core.ConsistencySettings()",
    )
    p.add_argument(
        "--cost-only",
        action="store_true",
        help="only time the consistency rows against the plain step (interleaved blocks); no training",
    )
    p.add_argument("--cost-rounds", type=int, default=None, help="block pairs of the step-cost timing")
    p.add_argument("--every", type=int, default=None, help="consistency loss every N steps")
    p.add_argument("--fraction", type=float, default=None, help="share of rows in the consistency loss")
    p.add_argument("--s-min", type=float, default=None, help="lower end of the log-uniform s range")
    p.add_argument(
        "--chain-steps", type=int, default=None, help="posterior steps per consistency chain (default 4)"
    )
    p.add_argument(
        "--s-distribution",
        choices=("log_uniform", "near"),
        default=None,
        help="how the consistency loss draws its lower level s (default log_uniform)",
    )
    levers = p.add_argument_group("levers (the oracle gets the same network and budget)")
    levers.add_argument("--hidden", type=int, default=None, help="MLP width (default 128)")
    levers.add_argument("--depth", type=int, default=None, help="MLP hidden layers (default 3)")
    levers.add_argument("--noise-freqs", type=int, default=None, help="Fourier frequencies of c_noise (8)")
    levers.add_argument(
        "--noise-embedding",
        choices=("fourier", "fourier_every_layer", "smooth"),
        default=None,
        help="how the MLP sees c_noise (default fourier: first layer only)",
    )
    levers.add_argument(
        "--weight-ramp",
        type=float,
        default=None,
        help="ramp the consistency weight linearly from 0 over this share of the steps (default 0)",
    )
    levers.add_argument(
        "--level-weight-power",
        type=float,
        default=None,
        help="noisy variants: ambient loss per row times (sigma_t/sigma_n)^-p, batch mean 1 (default 0)",
    )
    levers.add_argument(
        "--below-anchor",
        type=float,
        default=None,
        help="share of consistency rows anchored below sigma_n via the model's own sampler (default 0)",
    )
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    cfg = Config(
        dim=args.dim,
        components=args.components,
        std=args.std[0] if len(args.std) == 1 else tuple(args.std),
        sigma_ns=tuple(args.sigma_n),
        seed=args.seed,
        train_seed=args.train_seed,
    )
    if args.quick:
        cfg = replace(
            cfg,
            steps=800,
            train_size=10_000,
            eval_samples=4000,
            sample_steps=24,
            projections=128,
            error_points=2000,
            error_levels=3,
            cost_rounds=10,
        )
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    cfg = replace(
        cfg,
        weighting=args.weighting,
        variants=tuple(args.variants),
        settings_rows=tuple(args.settings_rows),
        consistency=RECIPE if args.consistency_base == "recipe" else SHIPPED,
    )
    knobs = {
        "weight": args.lam,
        "steps": args.chain_steps,
        "s_distribution": args.s_distribution,
        "every": args.every,
        "fraction": args.fraction,
        "s_min": args.s_min,
    }
    if args.cost_rounds is not None:
        cfg = replace(cfg, cost_rounds=args.cost_rounds)
    levers = {
        "hidden": args.hidden,
        "depth": args.depth,
        "noise_freqs": args.noise_freqs,
        "noise_embedding": args.noise_embedding,
        "weight_ramp": args.weight_ramp,
        "level_weight_power": args.level_weight_power,
        "below_anchor": args.below_anchor,
    }
    cfg = replace(cfg, **{k: v for k, v in levers.items() if v is not None})
    chosen = {k: v for k, v in knobs.items() if v is not None}
    if chosen:
        cfg = replace(cfg, consistency=replace(cfg.consistency, **chosen))
    return cfg


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = config_from_args(args)
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    if args.cost_only:
        payload = {"cost_only": cost_table(cfg), "config": asdict(cfg)}
        write_json_atomic(args.json, payload)
        print(f"wrote {args.json}; total {time.perf_counter() - start:.1f} s")
        return payload

    def payload_of(floors: dict[str, float], outcomes: Sequence[Outcome]) -> dict:
        return {"floor": floors, "results": [o.record() for o in outcomes], "config": asdict(cfg)}

    floors, outcomes = run_benchmark(cfg, lambda f, o: write_json_atomic(args.json, payload_of(f, o)))
    payload = payload_of(floors, outcomes)
    write_json_atomic(args.json, payload)
    print(f"\nwrote {args.json}")
    if args.plot is not None:
        if cfg.dim == 2:
            plot(args.plot, make_mixture(cfg), outcomes, cfg)
            print(f"wrote {args.plot}")
        else:
            print(f"skipping the plot: it needs --dim 2, got {cfg.dim}")
    print(f"total {time.perf_counter() - start:.1f} s")
    return payload


if __name__ == "__main__":
    main()
