"""Distributed ambient fine-tuning: Ray Train workers running DeepSpeed with the ambient + consistency loss.

Names are imported on first use (ambient.lazy): a job validates its config before torch loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "Callback": "callbacks",
    "FinetuneConfig": "config",
    "FinetuneRun": "trainer",
    "RunLayout": "layout",
    "run_finetune": "trainer",
}
__all__ = [
    "Callback",
    "FinetuneConfig",
    "FinetuneRun",
    "RunLayout",
    "run_finetune",
]
assert sorted(__all__) == sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .callbacks import Callback
    from .config import FinetuneConfig
    from .layout import RunLayout
    from .trainer import FinetuneRun, run_finetune
