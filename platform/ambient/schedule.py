"""SDXL's training noise schedule in plain Python (no torch), for validating configs up front.

A model is trained at levels strictly above a row's noise: the samplers of ``ambient.core``
(``sample_training_timesteps``, ``sample_training_sigmas``) need a level above ``sigma (1 + margin)``
and below the schedule's largest sigma. A data or training noise level at or above that bound fails
only inside the workers; the configs check it here, naming the field.
"""

from __future__ import annotations

import functools
import math

SDXL_TRAIN_TIMESTEPS = 1000
SDXL_BETA_START, SDXL_BETA_END = 0.00085, 0.012
LEVEL_MARGIN = 1e-3  # the default margin of ambient.core's training-level samplers


@functools.cache
def sdxl_train_sigmas() -> tuple[float, ...]:
    """VE sigma of each SDXL training timestep ("scaled_linear" betas): 0.029 ... 14.61."""
    n = SDXL_TRAIN_TIMESTEPS
    root_start, root_end = math.sqrt(SDXL_BETA_START), math.sqrt(SDXL_BETA_END)
    alpha_bar, sigmas = 1.0, []
    for i in range(n):
        alpha_bar *= 1 - (root_start + (root_end - root_start) * i / (n - 1)) ** 2
        sigmas.append(math.sqrt((1 - alpha_bar) / alpha_bar))
    return tuple(sigmas)


def sdxl_sigma(timestep: float) -> float:
    """VE sigma at a (possibly fractional) timestep, log-linear between entries (as core does)."""
    table = sdxl_train_sigmas()
    lo = min(int(math.floor(timestep)), len(table) - 2)
    frac = timestep - lo
    return math.exp(math.log(table[lo]) * (1 - frac) + math.log(table[lo + 1]) * frac)


def highest_trainable_sigma() -> float:
    """Levels strictly below this leave training levels above them on SDXL's schedule."""
    return sdxl_train_sigmas()[-1] / (1 + LEVEL_MARGIN)


def check_trainable_sigma(field: str, sigma: float, given: str = "") -> None:
    """ValueError naming ``field`` when no SDXL training level lies above ``sigma``."""
    limit = highest_trainable_sigma()
    if sigma >= limit:
        what = given or f"{sigma:.6g}"
        raise ValueError(
            f"{field} = {what} leaves no SDXL training level above it (the schedule's "
            f"{SDXL_TRAIN_TIMESTEPS} timesteps reach sigma {sdxl_train_sigmas()[-1]:.4g}); "
            f"use a level below sigma {limit:.4g} (timestep {SDXL_TRAIN_TIMESTEPS - 2} or less)"
        )
