"""Hyperparameter sweeps with Ray Tune: each trial a full fine-tuning run."""

from .config import SweepConfig
from .sweep import run_sweep

__all__ = ["SweepConfig", "run_sweep"]
