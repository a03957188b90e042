"""Package exports imported on first use (PEP 562).

A job validates its config before anything heavy loads: ``from ambient.train.config import
FinetuneConfig`` runs ``ambient/train/__init__.py`` first, which must not import torch, diffusers and
DeepSpeed (about 12 s on 2 cores) for a config class. Ray workers that unpickle one light submodule
are spared the same way.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: name -> the submodule (relative) defining it."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *exports])

    return __getattr__, __dir__
