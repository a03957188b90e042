"""Typed configuration: pydantic models, YAML loading, ``--set key.path=value`` overrides.

Every job validates its whole configuration here, before any cluster work starts; an error names
the offending field by its dotted path. Each subpackage defines the section it owns as a
``Section`` subclass; the job configs compose them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field(s) and the reason."""


class _LocalPathMarker:
    """Field metadata: the value is a local path or a URI (``s3://...``)."""

    def __repr__(self) -> str:
        return "LOCAL_PATH"


LOCAL_PATH = _LocalPathMarker()
# A local path or an s3:// URI. Jobs resolve a relative local path against the caller's directory
# before any cluster work (resolve_local_paths): Ray Tune trials and Ray workers run elsewhere.
PathOrUri = Annotated[str, LOCAL_PATH]
OptionalPathOrUri = Annotated[str | None, LOCAL_PATH]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# A key that names a secret, password, token or credential: its value is never shown in an error.
SECRET_KEY = re.compile(
    r"secret|pass(word|wd|phrase)|token|credential|api_?key|access_?key|private_?key|(^|[_-])keys?($|[_-])",
    re.IGNORECASE,
)


def looks_secret(key: object) -> bool:
    return isinstance(key, str) and SECRET_KEY.search(key) is not None


def _parse_value(text: str) -> Any:
    """Values of ``--set`` are YAML scalars/lists: 3, 1e-4, true, [0.2, 0.5], null, or a string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``key.path=value`` override to a nested dict, in place. A secret-looking key keeps a
    scalar value verbatim (``0012`` stays a string, not 12); errors name the key, never the value."""
    if "=" not in assignment:
        key_only = re.split(r"[:\s]", assignment.strip(), maxsplit=1)[0]
        raise ConfigError(f"override {key_only!r}: must look like key.path=value")
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError("override with an empty key: must look like key.path=value")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key.strip()!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    value = _parse_value(raw)
    if looks_secret(parts[-1]) and value is not None and not isinstance(value, str | list | dict):
        value = raw  # a numeric-looking secret stays the exact text given
    node[parts[-1]] = value


def _shown_input(loc: tuple, error_type: str, value: Any) -> str:
    """The offending value for an error line, or nothing: never under a secret-looking key, never a
    mapping (it may hold one), never a list that holds mappings."""
    hidden = (
        error_type == "missing"
        or any(looks_secret(part) for part in loc)
        or isinstance(value, Mapping)
        or (isinstance(value, list | tuple) and any(isinstance(v, Mapping | list | tuple) for v in value))
    )
    return "" if hidden else f" (got {value!r})"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "config"  # cross-field checks name their fields in msg
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see the job's --help or jobs/configs/)"
        lines.append(f"  {loc}: {msg}{_shown_input(e['loc'], e['type'], e.get('input'))}")
    return "\n".join(lines)


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What and where, without quoting the file's text (the line may hold a secret)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def load_config(
    cls: type[T],
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    base: Mapping | None = None,
) -> T:
    """Build ``cls`` from ``base``, then the YAML file at ``path``, then the overrides, and validate."""
    data: dict = deep_merge({}, dict(base or {}))
    if path is not None:
        data = deep_merge(data, read_yaml(path))
    for assignment in overrides:
        apply_override(data, assignment)
    source = str(path) if path else "defaults"
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def deep_merge(into: Mapping, other: Mapping) -> dict:
    """``into`` updated by ``other``, nested mappings merged key by key (neither input is modified)."""
    out = dict(into)
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


def absolute_path(value: str, base: str | os.PathLike | None = None) -> str:
    """A local path made absolute against ``base`` (default: the current directory), ``~`` expanded;
    a URI (``s3://...``, anything with ``://``) is returned unchanged."""
    if not value or "://" in value:
        return value
    return os.path.abspath(os.path.join(base or os.getcwd(), os.path.expanduser(value)))


def resolve_local_paths(model: T, base: str | os.PathLike | None = None) -> T:
    """A copy of ``model`` whose every ``PathOrUri`` field (in nested sections and lists of sections
    too) holds an absolute local path; URIs and unset fields are left as they are."""
    updates: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if LOCAL_PATH in field.metadata and isinstance(value, str):
            new = absolute_path(value, base)
        elif isinstance(value, BaseModel):
            new = resolve_local_paths(value, base)
        elif isinstance(value, list):
            new = [resolve_local_paths(v, base) if isinstance(v, BaseModel) else v for v in value]
        else:
            continue
        if new != value:
            updates[name] = new
    return model.model_copy(update=updates) if updates else model


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
