"""The sweep's axes: one table of named axes, each the dotted path of the FinetuneConfig field it sets.

A trial's parameters become ``--set`` overrides (``path=value``) applied to the base config by the
same function the jobs' ``--set`` uses, so a value is validated, and an error worded, exactly as
``jobs/finetune.py --set path=value`` would. Adding a named axis is one entry in ``AXES``; any other
field can be swept without a code change through ``space.paths`` (see docs/sweep.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True)
class Axis:
    name: str  # the key under ``space:`` and the results table's column
    path: str  # the dotted FinetuneConfig field each value is set on
    doc: str


AXES: tuple[Axis, ...] = (
    Axis("sigma_train", "loss.sigma_train", "training noise levels (VE sigma); each >= the data's sigma_n"),
    Axis("consistency_weight", "consistency.weight", "consistency loss weights lambda; each >= 0"),
    Axis("lr", "optim.lr", "learning rates; each > 0"),
    Axis("consistency_steps", "consistency.steps", "posterior sampler steps of the consistency loss"),
    Axis("lora_rank", "model.lora_rank", "LoRA ranks; 0 = full fine-tuning"),
)
NAMED = {axis.name: axis for axis in AXES}

# Sections a ``space.paths`` axis may not set: the sweep owns each trial's run name and storage path,
# and the storage credentials are not a hyperparameter.
RESERVED_SECTIONS = ("run", "storage")


def axis_path(name: str) -> str:
    """The field an axis sets: a named axis's path, or the name itself for a ``space.paths`` axis."""
    return NAMED[name].path if name in NAMED else name


def override(path: str, value: Any) -> str:
    """The ``--set`` text that gives the field at ``path`` this value (YAML, as a user would type it)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    text = text.removesuffix("...").strip()  # the document end marker after a bare scalar
    return f"{path}={text}"


def overrides(params: Mapping[str, Any]) -> list[str]:
    """A trial's parameters ({axis name: value}) as ``--set`` overrides of the fine-tuning config."""
    return [override(axis_path(name), value) for name, value in params.items()]


def flatten_paths(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``space.paths`` as {dotted path: values}: keys may be dotted (``optim.weight_decay``) or nested
    (``optim: {weight_decay: ...}``, which ``--set space.paths.optim.weight_decay=[...]`` produces);
    a list ends a path."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_paths(value, f"{path}."))
        else:
            out[path] = value
    return out
