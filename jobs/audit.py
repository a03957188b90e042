"""Memorization audit and quality evaluation of one model, or several side by side.

    python jobs/audit.py [--config FILE] [--set key.path=value ...] [--dry-run]
    python jobs/audit.py --set 'models=[{path: runs/clean/model, label: clean}, {path: runs/noisy/model, label: noisy}]'

With no arguments it audits the tiny demo model on synthetic training items (jobs/configs/audit_demo.yaml).
Reconstruction attack (heavy noise at SDXL timestep 900, one Tweedie step and the whole sampler),
generation similarity against the training images, and a quality score. See docs/audit.md.
The last line printed is the path of the report (report.md; report.json and PNGs beside it).
"""

from __future__ import annotations

from pathlib import Path

from ambient import eval as audit  # its names load on first use: the config is checked first
from ambient.cli import job_parser, parse_job_config, run_job

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "audit_demo.yaml"


def main() -> None:
    args = job_parser(__doc__.splitlines()[0]).parse_args()
    config = parse_job_config(audit.AuditConfig, args, str(DEMO_CONFIG))
    if args.dry_run:
        run_job(
            audit.dry_run, config
        )  # missing paths are errors in a dry run too; prints the report path it would write
        return
    run_job(audit.run_audit, config)


if __name__ == "__main__":
    main()
