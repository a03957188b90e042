"""Hyperparameter sweeps with Ray Tune: each trial a full fine-tuning run.

Names are imported on first use (ambient.lazy): a job validates its config before torch loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "SweepConfig": "config",
    "run_sweep": "sweep",
}
__all__ = [
    "SweepConfig",
    "run_sweep",
]
assert sorted(__all__) == sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .config import SweepConfig
    from .sweep import run_sweep
