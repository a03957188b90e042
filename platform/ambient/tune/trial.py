"""One trial's fine-tuning config: the sweep's base with the trial's axis values applied as ``--set``
overrides (ambient.config.load_config, the jobs' own override path)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from ambient.config import ConfigError, load_config, looks_secret
from ambient.train.config import FinetuneConfig

from .axes import NAMED, axis_path, overrides


def apply_axes(base: Mapping[str, Any], params: Mapping[str, Any]) -> FinetuneConfig:
    """``base`` (a FinetuneConfig as plain data) with each {axis name: value} applied; ConfigError
    naming the field, worded as ``--set path=value`` on the base would be."""
    return load_config(FinetuneConfig, None, overrides(params), base=base)


def trial_config(
    base: Mapping[str, Any], params: Mapping[str, Any], name: str, storage_path: str
) -> FinetuneConfig:
    """The fine-tuning config of one trial: the base with the trial's parameters applied."""
    data = copy.deepcopy(dict(base))
    data["run"] = {**data.get("run", {}), "name": name, "storage_path": storage_path}
    data["validation"] = {**data.get("validation", {}), "mode": "auto"}
    return apply_axes(data, params)


def shown_axes(params: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's {axis name: value} as a tracker may show them: a secret field's value as '***'."""
    return {
        name: "***" if any(looks_secret(p) for p in axis_path(name).split(".")) else value
        for name, value in params.items()
    }


def field_value(cfg: BaseModel, path: str) -> Any:
    """The value of the field at a dotted path."""
    value: Any = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def checked_values(base: Mapping[str, Any], name: str, values: Sequence[Any]) -> list[Any]:
    """The axis's values as the config holds them (coerced by the field's type), each applied to the
    base; ValueError naming ``space.<name>``, the value, and the field's own error."""
    checked = []
    for value in values:
        try:
            cfg = apply_axes(base, {name: value})
        except ConfigError as err:
            detail = "; ".join(line.strip() for line in str(err).splitlines()[1:])
            path = axis_path(name)
            label = f"space.{name}" if name in NAMED else f"space.paths.{name}"
            shown = "" if any(looks_secret(p) for p in path.split(".")) else f" = {value!r}"
            raise ValueError(f"{label}{shown} (sets {path}): {detail}") from None
        checked.append(field_value(cfg, axis_path(name)))
    return checked
