"""The command line, generated from the dataclasses: one option per Config field and per knob of the
consistency loss, with the type, choices and help of the field and its default in the help text.

Options default to None ("not given"), so that --quick and --consistency-base apply first and whatever
the command line names wins over them.
"""

from __future__ import annotations

import argparse
import time
import types
import typing
from collections.abc import Sequence
from dataclasses import Field, asdict, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch

from ambient.core import ConsistencySettings

from . import __doc__ as overview
from .config import BASES, QUICK, Config
from .data import make_mixture
from .plots import plot
from .report import write_json_atomic
from .run import Outcome, cost_table, run_benchmark

# Flags of the consistency knobs whose name is not the field's (lambda as in the paper; --steps is the
# training's).
KNOB_FLAGS = {"weight": "--lam", "steps": "--chain-steps"}
KNOBS_GROUP = "consistency loss (default: the --consistency-base settings)"


def argument_kind(hint: Any) -> dict[str, Any]:
    """argparse keywords (type, choices, nargs) for a field's type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return {"type": type(args[0]), "choices": args}
    if origin is tuple:
        return {**argument_kind(args[0]), "nargs": "+"}
    if origin in (typing.Union, types.UnionType):  # a value or a tuple of them: one or more values
        return argument_kind(next(a for a in args if typing.get_origin(a) is tuple))
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if hint in (int, float, str):
        return {"type": hint}
    raise TypeError(f"no command-line form for the type {hint!r}")


def from_command_line(hint: Any, value: Any) -> Any:
    """The field's value from the parsed one: lists become tuples; a value-or-tuple field takes one
    value as the value itself."""
    if not isinstance(value, list):
        return value
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(value) == 1:
        return value[0]
    return tuple(value)


def shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def config_fields() -> list[Field]:
    return [f for f in fields(Config) if f.metadata.get("cli", True)]


def add_config_options(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(Config)
    groups: dict[str, Any] = {}
    for f in config_fields():
        group = groups.get(f.metadata["group"]) or parser.add_argument_group(f.metadata["group"])
        groups[f.metadata["group"]] = group
        kind = argument_kind(hints[f.name])
        if "choices" in f.metadata:
            kind["choices"] = f.metadata["choices"]
        default = f"default {shown(f.default) or 'none'}"
        if f.name in QUICK:
            default += f"; --quick {shown(QUICK[f.name])}"
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        group.add_argument(flag, dest=f.name, default=None, help=f"{f.metadata['help']} ({default})", **kind)


def add_knob_options(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(ConsistencySettings)
    group = parser.add_argument_group(KNOBS_GROUP)
    bases = sorted(BASES)
    group.add_argument(
        "--consistency-base",
        choices=bases,
        default="recipe",
        help="settings of the 'consistency' variant before the knobs below: the benchmark recipe or "
        "core.ConsistencySettings() (default recipe)",
    )
    for f in fields(ConsistencySettings):
        per_base = ", ".join(f"{name} {shown(getattr(BASES[name], f.name))}" for name in bases)
        help = f"{f.metadata.get('doc', f.name)} ({per_base})"
        flag = KNOB_FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        kind = argument_kind(hints[f.name])
        if "type" in kind and "choices" not in kind:
            kind["metavar"] = f.name.upper()  # not the internal dest
        group.add_argument(flag, dest=f"knob_{f.name}", default=None, help=help, **kind)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.exactness", description=overview.split("\n\n")[0])
    p.add_argument("--json", type=Path, required=True, help="where to write the results")
    p.add_argument("--plot", type=Path, default=None, help="PNG scatter of the variants (d = 2 only)")
    p.add_argument("--quick", action="store_true", help="smaller budget and evaluation: a smoke run")
    p.add_argument(
        "--cost-only",
        action="store_true",
        help="only time the consistency rows against the plain step (interleaved blocks); no training",
    )
    add_config_options(p)
    add_knob_options(p)
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    """Config defaults, then --quick, then every option given; the consistency settings are the chosen
    base with the knobs given."""
    cfg = replace(Config(), **QUICK) if args.quick else Config()
    hints = typing.get_type_hints(Config)
    given = {f.name: getattr(args, f.name) for f in config_fields() if getattr(args, f.name) is not None}
    cfg = replace(cfg, **{name: from_command_line(hints[name], v) for name, v in given.items()})
    knobs = {f.name: getattr(args, f"knob_{f.name}") for f in fields(ConsistencySettings)}
    chosen = {name: v for name, v in knobs.items() if v is not None}
    return replace(cfg, consistency=replace(BASES[args.consistency_base], **chosen))


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = config_from_args(args)
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    if args.cost_only:
        payload = {"cost_only": cost_table(cfg), "config": asdict(cfg)}
        write_json_atomic(args.json, payload)
        print(f"wrote {args.json}; total {time.perf_counter() - start:.1f} s")
        return payload

    def payload_of(floors: dict[str, float], outcomes: Sequence[Outcome]) -> dict:
        return {"floor": floors, "results": [o.record() for o in outcomes], "config": asdict(cfg)}

    floors, outcomes = run_benchmark(cfg, lambda f, o: write_json_atomic(args.json, payload_of(f, o)))
    payload = payload_of(floors, outcomes)
    write_json_atomic(args.json, payload)
    print(f"\nwrote {args.json}")
    if args.plot is not None:
        if cfg.dim == 2:
            plot(args.plot, make_mixture(cfg), outcomes, cfg)
            print(f"wrote {args.plot}")
        else:
            print(f"skipping the plot: it needs --dim 2, got {cfg.dim}")
    print(f"total {time.perf_counter() - start:.1f} s")
    return payload
