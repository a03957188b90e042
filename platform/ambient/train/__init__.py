"""Distributed ambient fine-tuning: Ray Train workers running DeepSpeed with the ambient + consistency loss.

Names are imported on first use (ambient.lazy): a job validates its config before torch loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "FinetuneConfig": "config",
    "run_finetune": "trainer",
}
__all__ = [
    "FinetuneConfig",
    "run_finetune",
]
assert sorted(__all__) == sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .config import FinetuneConfig
    from .trainer import run_finetune
