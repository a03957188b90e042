"""Serve text-to-image sampling from an exported ambient model over HTTP (Ray Serve + FastAPI).

    python jobs/serve.py                                   # newest demo export, else the tiny default model
    python jobs/serve.py --model runs/ray/demo/outputs/model --port 8000
    python jobs/serve.py --model s3://models/faces-t500 --config jobs/configs/serve_demo.yaml \
        --set auth.token_env=AMBIENT_SERVE_TOKEN --host 0.0.0.0

Runs on the local cluster (or RAY_ADDRESS), prints the base URL once the service answers, and stays up
until interrupted. The API is described in docs/api.md and at <url>/docs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ambient.cli import job_parser, parse_job_config, print_dry_run, run_job
from ambient.serve.config import ServeConfig
from ambient.serve.runner import run_service

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "serve_demo.yaml"


def main() -> None:
    parser = job_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", help="exported diffusers folder or s3:// prefix (sets model)")
    parser.add_argument("--host", help="HTTP bind address (sets http.host; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (sets http.port; default 8000)")
    args = parser.parse_args()
    # The flags are shorthands for --set; JSON-quoting keeps a path with odd characters a string.
    for key, value in (("model", args.model), ("http.host", args.host), ("http.port", args.port)):
        if value is not None:
            args.overrides.append(f"{key}={json.dumps(value)}")
    config = parse_job_config(ServeConfig, args, str(DEMO_CONFIG))
    if args.dry_run:
        print_dry_run(config)
        return
    run_job(run_service, config)


if __name__ == "__main__":
    sys.exit(main())
