"""The command line every job shares: ``[--config FILE] [--set key.path=value ...] [--dry-run] [--verbose]``.

Every job goes through ``parse_job_config`` (validate; resolve relative local paths against the
caller's directory) and ``run_job`` (a user error is one line and exit status 2, a failed job one
message and exit status 1, the result path the last line).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from .config import ConfigError, load_config, redacted, resolve_local_paths
from .logs import configure_output, finish_ray_output

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
    """Validate the job's config from its arguments, every relative local path made absolute against
    the caller's directory (Ray Tune trials and Ray workers run in other directories); on error print
    the message and exit 2. Also sets up what the job prints (ambient.logs), before any Ray work."""
    configure_output(verbose=getattr(args, "verbose", False))
    try:
        return resolve_local_paths(load_config(cls, args.config or default_path, args.overrides))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def print_dry_run(config: BaseModel) -> None:
    print(json.dumps(redacted(config), indent=2, default=str))
    print("config is valid (dry run: nothing was started)")


class JobFailed(RuntimeError):
    """The input was valid but the work failed (say, no trial of a sweep completed); the message says
    what failed and why. Printed without a traceback, exit status 1."""


# Errors a user can fix (bad paths, data, storage, values): printed as one clear line, exit status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, ValueError, PermissionError)


def error_cause(err: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (a task error carries the original as ``cause``)."""
    seen = 0
    while getattr(err, "cause", None) is not None and seen < 10:
        err, seen = err.cause, seen + 1
    return err


def first_line(err: BaseException) -> str:
    """The first line of an error's own message (Ray's wrappers prepend a traceback)."""
    cause = error_cause(err)
    text = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def run_job(fn: Callable[[T], object], config: T) -> None:
    """Run the job and print its result (the last line: a path or URI); user errors exit 2 cleanly.

    Ray's worker logs arrive asynchronously: they are drained and stopped, and Ray is shut down,
    before the result is printed, so that nothing follows it."""
    from ambient.data.errors import DataError
    from ambient.storage import StorageError

    try:
        result = fn(config)
    except (*USER_ERRORS, DataError, StorageError) as err:
        print(f"error: {error_cause(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    except JobFailed as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    finish_ray_output()
    print(result, flush=True)
