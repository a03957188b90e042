"""Every default of the benchmark, once: the run's Config, the named consistency settings, --quick.

Each Config field carries its command-line help (and, where the name or choices differ from the field,
its flag and choices) in its metadata; ``cli`` builds the parser from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ambient.core import ConsistencySettings

VARIANTS = ("oracle", "naive", "early_stop", "consistency", "em_reference")
Variant = Literal["oracle", "naive", "early_stop", "consistency", "em_reference"]
TRAINED = ("oracle", "naive", "early_stop", "consistency")
NoiseEmbedding = Literal["fourier", "fourier_every_layer", "smooth"]

# The consistency loss as the platform ships it (the fine-tuning config's defaults) and as this benchmark
# measured it first (DESIGN.md section 2's reference trial): anchor at t = sigma_n with x_t = y, s
# log-uniform in (0.002, sigma_n), 4 posterior steps, stop-grad anchor; lambda = 10 because the
# x0-weighted ambient loss is in EDM units, which are larger than the consistency loss's plain x0 units.
SHIPPED = ConsistencySettings()
RECIPE = ConsistencySettings(weight=10.0, steps=4, fraction=1.0, every=1, s_min=0.002)
# What --consistency-base chooses between: the settings of the "consistency" variant before the knobs.
BASES: dict[str, ConsistencySettings] = {"recipe": RECIPE, "shipped": SHIPPED}
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

DATA, BUDGET, LEVERS, ROWS, EVALUATION = (
    "data",
    "budget (the same for every variant)",
    "levers (the oracle gets the same network and budget)",
    "rows",
    "reference, validation and evaluation",
)


def option(default: Any, help: str, group: str, **cli: Any) -> Any:
    """A Config field with its command-line help and group (``cli``: flag, choices) in its metadata."""
    return field(default=default, metadata={"help": help, "group": group, **cli})


@dataclass(frozen=True)
class Config:
    """Everything that defines one benchmark run; identical for the four variants."""

    dim: int = option(2, "dimension d of the data", DATA)
    components: int = option(8, "mixture components K", DATA)
    sigma_ns: tuple[float, ...] = option(
        (0.2, 0.5, 1.0), "noise levels sigma_n, one block each", DATA, flag="--sigma-n"
    )
    seed: int = option(0, "seeds everything, the mixture included", DATA)
    train_seed: int = option(0, "reseeds training and sampling (and EM's sampling) only: same data", DATA)
    scale: float = option(1.0, "component means uniform in [-scale, scale]^d", DATA)
    # A second data shape: clusters of different widths.
    std: float | tuple[float, ...] = option(
        0.1, "component std: one value for all, or one per component", DATA
    )
    sigma_data: float = option(0.5, "sigma_data of the EDM preconditioning", DATA)
    train_size: int = option(50_000, "clean training draws x0 (the noisy set is x0 + noise)", DATA)
    steps: int = option(4000, "training steps per variant", BUDGET)
    batch: int = option(512, "batch size", BUDGET)
    lr: float = option(2e-3, "peak Adam learning rate (warm-up, then cosine decay)", BUDGET)
    hidden: int = option(128, "MLP width", LEVERS)
    depth: int = option(3, "MLP hidden layers", LEVERS)
    noise_freqs: int = option(8, "Fourier frequencies of c_noise", LEVERS)
    noise_embedding: NoiseEmbedding = option(
        "fourier",
        "how the MLP sees c_noise: fourier: sin/cos of c_noise at pi 2^k / 4 (k < noise_freqs) beside the "
        "first layer's input; fourier_every_layer: the same beside every layer's input; smooth: c_noise "
        "and sin/cos at pi 2^k / 4 for k < min(noise_freqs, 3), first layer",
        LEVERS,
    )
    weight_ramp: float = option(
        0.0, "ramp the consistency weight linearly from 0 over this share of the steps (0: no ramp)", LEVERS
    )
    level_weight_power: float = option(
        0.0,
        "noisy variants: ambient loss per row times (sigma_t / sigma_n)^-p, batch mean 1 "
        "(p > 0 favours levels near sigma_n)",
        LEVERS,
    )
    below_anchor: float = option(
        0.0,
        "share of consistency rows anchored below sigma_n: t log-uniform in (max(s_min, sigma_n / 20), "
        "sigma_n), x_t drawn by the model's own posterior sampler (no grad) from (y, sigma_n)",
        LEVERS,
    )
    weighting: Literal["none", "x0"] = option("x0", "ambient-loss weighting of every variant", BUDGET)
    variants: tuple[str, ...] = option(
        VARIANTS[1:4],
        "which variants besides the oracle (always trained) to run (em_reference: opt in)",
        ROWS,
        choices=VARIANTS[1:],
    )
    settings_rows: tuple[str, ...] = option(
        (),
        "extra consistency rows with named settings (shipped defaults, recipe, one-knob moves), each "
        "trained like 'consistency' with its settings",
        ROWS,
        choices=tuple(SETTINGS_ROWS),
    )
    # Set on the command line by --consistency-base and the knobs of the consistency loss.
    consistency: ConsistencySettings = field(default_factory=lambda: RECIPE, metadata={"cli": False})
    cost_rounds: int = option(
        30, "block pairs of the interleaved step-cost timing of each consistency row (0: skip it)", ROWS
    )
    em_restarts: int = option(3, "EM reference: restarts (the best log-likelihood is kept)", EVALUATION)
    em_iters: int = option(300, "EM reference: iteration cap of each restart", EVALUATION)
    # Held-out validation ambient loss: fresh clean draws noised with sigma_n (noise of its own seed),
    # evaluated at multiples of sigma_n with fixed noise, in the run's weighting.
    validation_size: int = option(10_000, "held-out noisy points of the validation ambient loss", EVALUATION)
    validation_levels: tuple[float, ...] = option(
        (1.5, 2.0, 3.0, 5.0), "levels of the validation loss, in units of sigma_n", EVALUATION
    )
    eval_samples: int = option(10_000, "generated (and fresh clean) samples of the SW2", EVALUATION)
    sample_steps: int = option(32, "Heun sampler steps", EVALUATION)
    projections: int = option(256, "random directions of the sliced W2", EVALUATION)
    error_points: int = option(4000, "fresh clean points of the denoiser error", EVALUATION)
    error_levels: int = option(
        4, "noise levels of the denoiser error, below and above sigma_n each", EVALUATION
    )
    floor_pairs: int = option(4, "clean-vs-clean pairs averaged into the SW2 floor", EVALUATION)
    # One thread: the MLP is too small to gain from more, and a shared 2-core machine loses to oversubscription.
    threads: int = option(1, "torch threads", BUDGET)


# --quick: a smaller budget and evaluation for a smoke run (options given explicitly still win).
QUICK: dict[str, Any] = {
    "steps": 800,
    "train_size": 10_000,
    "eval_samples": 4000,
    "sample_steps": 24,
    "projections": 128,
    "error_points": 2000,
    "error_levels": 3,
    "cost_rounds": 10,
}
