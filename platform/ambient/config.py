"""Typed configuration: pydantic models, YAML loading, ``--set key.path=value`` overrides.

Every job validates its whole configuration here, before any cluster work starts; an error names
the offending field by its dotted path. Each subpackage defines the section it owns as a
``Section`` subclass; the job configs compose them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field(s) and the reason."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _parse_value(text: str) -> Any:
    """Values of ``--set`` are YAML scalars/lists: 3, 1e-4, true, [0.2, 0.5], null, or a string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``key.path=value`` override to a nested dict, in place."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {assignment!r} has an empty key")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = _parse_value(raw)


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "config"  # cross-field checks name their fields in msg
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see the job's --help or jobs/configs/)"
        got = e.get("input")
        shown = "" if isinstance(got, Mapping) or e["type"] == "missing" else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(
    cls: type[T],
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    base: Mapping | None = None,
) -> T:
    """Build ``cls`` from ``base``, then the YAML file at ``path``, then the overrides, and validate."""
    data: dict = _deep_merge({}, dict(base or {}))
    if path is not None:
        data = _deep_merge(data, read_yaml(path))
    for assignment in overrides:
        apply_override(data, assignment)
    source = str(path) if path else "defaults"
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def _deep_merge(into: dict, other: Mapping) -> dict:
    out = dict(into)
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


def redacted(model: BaseModel) -> dict:
    """The config as plain data, secrets replaced by '***' (for summaries and logs)."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return "***" if value.get_secret_value() else ""
        if isinstance(value, BaseModel):
            return {k: walk(getattr(value, k)) for k in type(value).model_fields}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return walk(model)
