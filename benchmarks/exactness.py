"""Exactness benchmark: does ambient diffusion learn the *clean* distribution from noisy data?

The data is a mixture of Gaussians in R^d, where the clean law and E[x0 | x_sigma] are known in closed
form. Four variants share one small network (an MLP behind EDM preconditioning), one budget (steps,
batch, learning rate) and one sampler; only the loss and where sampling stops differ:

- oracle:      trained on the clean data (ambient_loss with sigma_n = 0), sampled to sigma = 0;
- naive:       trained on the noisy data as if it were clean, sampled to sigma = 0;
- early_stop:  ambient_loss on the noisy data, sampled down to sigma_n and finished with one Tweedie step;
- consistency: ambient_loss + lambda * consistency_loss on the noisy data, sampled to sigma = 0.

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
from collections.abc import Sequence
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
    sample_training_sigmas,
)

VARIANTS = ("oracle", "naive", "early_stop", "consistency")
Variant = Literal["oracle", "naive", "early_stop", "consistency"]


@dataclass(frozen=True)
class Config:
    """Everything that defines one benchmark run; identical for the four variants."""

    dim: int = 2
    components: int = 8
    sigma_ns: tuple[float, ...] = (0.2, 0.5, 1.0)
    seed: int = 0
    # Data: means uniform in [-scale, scale]^d, isotropic std per component.
    scale: float = 1.0
    std: float = 0.1
    sigma_data: float = 0.5
    train_size: int = 50_000
    # Budget (the same for every variant).
    steps: int = 4000
    batch: int = 512
    lr: float = 2e-3
    hidden: int = 128
    depth: int = 3
    noise_freqs: int = 8
    weighting: Literal["none", "x0"] = "x0"
    variants: tuple[str, ...] = VARIANTS[1:]  # besides the oracle, which is always trained
    # Anchor at t = sigma_n with x_t = y, s log-uniform in (0.002, sigma_n), 4 posterior steps, stop-grad
    # anchor (DESIGN.md section 2); lambda = 10 because the x0-weighted ambient loss is in EDM units, which
    # are larger than the consistency loss's plain x0 units.
    consistency: ConsistencySettings = field(
        default_factory=lambda: ConsistencySettings(weight=10.0, steps=4, fraction=1.0, every=1, s_min=0.002)
    )
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
    """F(x_scaled, c_noise): an MLP on the input concatenated with Fourier features of c_noise."""

    def __init__(self, dim: int, hidden: int, depth: int, freqs: int = 8) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.pi * 2.0 ** torch.arange(freqs, dtype=torch.float32) / 4)
        layers: list[nn.Module] = []
        width = dim + 2 * freqs
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        angles = c_noise.reshape(-1, 1) * self.freqs
        return self.body(torch.cat([x, angles.sin(), angles.cos()], dim=1))


def make_denoiser(cfg: Config) -> EDMDenoiser:
    return EDMDenoiser(MLP(cfg.dim, cfg.hidden, cfg.depth, cfg.noise_freqs), sigma_data=cfg.sigma_data)


# ---- data ------------------------------------------------------------------------------------------


def make_mixture(cfg: Config) -> GaussianMixture:
    return GaussianMixture.random(cfg.dim, cfg.components, scale=cfg.scale, std=cfg.std, seed=cfg.seed)


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


def train(variant: Variant, data: Tensor, loss_sigma_n: float, cfg: Config, seed: int) -> EDMDenoiser:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = make_denoiser(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    settings = cfg.consistency
    sigma_n = torch.full((cfg.batch,), loss_sigma_n)
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        y = data[torch.randint(data.shape[0], (cfg.batch,), generator=gen)]
        sigma_t = sample_training_sigmas(sigma_n, generator=gen)
        noise = torch.randn(y.shape, generator=gen)
        loss = ambient_loss(
            model, y, sigma_n, sigma_t, noise, weighting=cfg.weighting, sigma_data=cfg.sigma_data
        ).mean()
        if variant == "consistency" and settings.active(step):
            loss = loss + settings.weight * consistency_loss(model, y, sigma_n, settings, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


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


@torch.no_grad()
def denoiser_error(
    model: EDMDenoiser, gm: GaussianMixture, sigmas: Sequence[float], n: int, seed: int
) -> float:
    """Mean over ``sigmas`` of E || h(x_sigma, sigma) - E[x0 | x_sigma] ||^2 / d on fresh clean x0."""
    gen = torch.Generator().manual_seed(seed)
    errors = []
    for sigma in sigmas:
        x = clean_samples(gm, n, seed + 1) + sigma * torch.randn(n, gm.dim, generator=gen)
        truth = gm.posterior_mean(x.double(), sigma).float()
        pred = model(x, torch.full((n,), sigma))
        errors.append(float(((pred - truth) ** 2).mean()))
    return sum(errors) / len(errors)


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

    def record(self) -> dict:
        out = asdict(self)
        out.pop("samples")
        return out


@dataclass
class Trained:
    model: EDMDenoiser
    samples: Tensor
    seconds: float


def train_and_draw(variant: Variant, x0: Tensor, y: Tensor, sigma_n: float, cfg: Config) -> Trained:
    start = time.perf_counter()
    data, loss_sigma_n = training_inputs(variant, x0, y, sigma_n)
    model = train(variant, data, loss_sigma_n, cfg, seed=cfg.seed + 1)
    samples = draw(model, variant, sigma_n, cfg, seed=cfg.seed + 2)
    return Trained(model, samples, time.perf_counter() - start)


def evaluate(variant: Variant, trained: Trained, gm: GaussianMixture, sigma_n: float, cfg: Config) -> Outcome:
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
    )


def run_variant(
    variant: Variant, gm: GaussianMixture, x0: Tensor, y: Tensor, sigma_n: float, cfg: Config
) -> Outcome:
    return evaluate(variant, train_and_draw(variant, x0, y, sigma_n, cfg), gm, sigma_n, cfg)


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


def run_benchmark(cfg: Config) -> tuple[dict[str, float], list[Outcome]]:
    gm = make_mixture(cfg)
    x0 = clean_samples(gm, cfg.train_size, cfg.seed + 7)
    floor = clean_floor(gm, cfg)
    floors: dict[str, float] = {}
    outcomes: list[Outcome] = []
    oracle: Trained | None = None  # never sees sigma_n: trained once, evaluated at every sigma_n
    for sigma_n in cfg.sigma_ns:
        floors[str(sigma_n)] = floor
        y = noisy_training_set(x0, sigma_n, cfg.seed + 8)
        oracle = oracle or train_and_draw("oracle", x0, y, sigma_n, cfg)
        rows = [evaluate("oracle", oracle, gm, sigma_n, cfg)]
        rows += [run_variant(v, gm, x0, y, sigma_n, cfg) for v in VARIANTS[1:] if v in cfg.variants]
        print_table(sigma_n, floor, rows)
        outcomes += rows
    return floors, outcomes


# ---- output ----------------------------------------------------------------------------------------


def print_table(sigma_n: float, floor: float, rows: Sequence[Outcome]) -> None:
    oracle = next(r.sw2 for r in rows if r.variant == "oracle")
    print(f"\nsigma_n = {sigma_n:g}   (clean-vs-clean SW2 floor {floor:.4f})")
    print(
        f"{'variant':<12} {'sw2':>8} {'/oracle':>8} {'/floor':>8} {'err<sn':>9} {'err>sn':>9} {'seconds':>8}"
    )
    for r in rows:
        print(
            f"{r.variant:<12} {r.sw2:8.4f} {r.sw2 / oracle:8.2f} {r.sw2 / floor:8.2f} "
            f"{r.denoiser_error_below:9.2e} {r.denoiser_error_above:9.2e} {r.seconds:8.1f}",
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
    nrows, ncols = len(cfg.sigma_ns), 2 + len(cfg.variants)  # truth, oracle, the others
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3 * nrows), squeeze=False)
    lim = cfg.scale + 4 * cfg.std + 0.3
    for i, sigma_n in enumerate(cfg.sigma_ns):
        rows = [o for o in outcomes if o.sigma_n == sigma_n]
        panels = [("truth", truth, None)] + [(o.variant, o.samples.numpy(), o.sw2) for o in rows]
        for ax, (name, pts, sw2) in zip(axes[i], panels, strict=True):
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
    p.add_argument("--sigma-n", type=float, nargs="+", default=[0.2, 0.5, 1.0])
    p.add_argument("--seed", type=int, default=0)
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
        default=list(VARIANTS[1:]),
        help="which variants besides the oracle (always trained) to run",
    )
    p.add_argument(
        "--chain-steps", type=int, default=None, help="posterior steps per consistency chain (default 4)"
    )
    p.add_argument(
        "--s-distribution",
        choices=("log_uniform", "near"),
        default=None,
        help="how the consistency loss draws its lower level s (default log_uniform)",
    )
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    cfg = Config(dim=args.dim, components=args.components, sigma_ns=tuple(args.sigma_n), seed=args.seed)
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
        )
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    cfg = replace(cfg, weighting=args.weighting, variants=tuple(args.variants))
    if args.lam is not None:
        cfg = replace(cfg, consistency=replace(cfg.consistency, weight=args.lam))
    if args.chain_steps is not None:
        cfg = replace(cfg, consistency=replace(cfg.consistency, steps=args.chain_steps))
    if args.s_distribution is not None:
        cfg = replace(cfg, consistency=replace(cfg.consistency, s_distribution=args.s_distribution))
    return cfg


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = config_from_args(args)
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    floors, outcomes = run_benchmark(cfg)
    payload = {"floor": floors, "results": [o.record() for o in outcomes]}
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
