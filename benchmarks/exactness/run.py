"""One benchmark row (train or fit, draw, evaluate) and the whole benchmark over every sigma_n."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from ambient.core import ConsistencySettings, GaussianMixture

from .config import SETTINGS_ROWS, VARIANTS, Config, Variant
from .data import clean_samples, make_mixture, noisy_training_set, validation_set
from .metrics import Denoise, denoiser_error, error_grids, sliced_w2, validation_loss
from .reference import em_reference
from .report import print_table
from .train import TrainCost, draw, interleaved_step_cost, train, training_inputs


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
