"""The command line every job shares: ``[--config FILE] [--set key.path=value ...] [--dry-run] [--verbose]``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from .config import ConfigError, load_config, redacted
from .logs import configure_output, finish_ray_output, quiet_imports

quiet_imports()  # before a job imports transformers and DeepSpeed (it imports ambient.cli first)

T = TypeVar("T", bound=BaseModel)


def job_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML config file (defaults: the job's embedded demo config)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one config value (repeatable), e.g. --set train.max_steps=20",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate the config, print it and exit")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show everything Ray prints (its progress blocks and the warnings hidden as harmless)",
    )
    return parser


def parse_job_config(cls: type[T], args: argparse.Namespace, default_path: str | None = None) -> T:
    """Validate the job's config from its arguments; on error print the message and exit 2.

    Also sets up what the job prints (ambient.logs), before any Ray work starts."""
    configure_output(verbose=getattr(args, "verbose", False))
    try:
        return load_config(cls, args.config or default_path, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def print_dry_run(config: BaseModel) -> None:
    print(json.dumps(redacted(config), indent=2, default=str))
    print("config is valid (dry run: nothing was started)")


# Errors a user can fix (bad paths, data, storage, values): printed as one clear line, exit status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, ValueError, PermissionError)


def run_job(fn: Callable[[T], object], config: T) -> None:
    """Run the job and print its result (the last line: a path or URI); user errors exit 2 cleanly.

    Ray's worker logs arrive asynchronously: they are drained and stopped, and Ray is shut down,
    before the result is printed, so that nothing follows it."""
    from ambient.data.errors import DataError

    try:
        result = fn(config)
    except (*USER_ERRORS, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    finish_ray_output()
    print(result, flush=True)
