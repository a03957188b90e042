"""Sweep noise levels and consistency weights with Ray Tune; each trial is a full fine-tuning run.

    python jobs/sweep.py [--config FILE] [--set key.path=value ...] [--dry-run]

With no arguments it runs the demo 2x2 grid (two training noise levels x two lambdas) on a local
cluster. Rerunning an interrupted sweep resumes it without rerunning finished trials. The last line
printed is the path of the results table.
"""

from __future__ import annotations

from pathlib import Path

from ambient import tune  # its names load on first use: the config is checked before torch loads
from ambient.cli import job_parser, parse_job_config, print_dry_run, run_job

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "sweep_demo.yaml"


def main() -> None:
    args = job_parser(__doc__.splitlines()[0]).parse_args()
    config = parse_job_config(tune.SweepConfig, args, str(DEMO_CONFIG))
    if args.dry_run:
        print_dry_run(config)
        return
    run_job(tune.run_sweep, config)


if __name__ == "__main__":
    main()
