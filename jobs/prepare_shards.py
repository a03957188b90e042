"""Prepare noisy-latent shards: images + captions -> VAE latents + frozen noise -> Parquet + manifest.

    python jobs/prepare_shards.py                      # the demo: synthetic shapes -> runs/demo/shards
    python jobs/prepare_shards.py --set destination.uri=s3://bucket/ds  # endpoint etc. from AWS_*
    python jobs/prepare_shards.py --set noise.sigma_n=null --set noise.t_n=500  # noise as a timestep

An existing dataset at destination.uri is refused unless destination.overwrite is true (the demo
config sets it); two preparations of one destination never run at once (a lock object beside it).
The last line printed is the manifest's URI.
"""

from __future__ import annotations

from pathlib import Path

from ambient.cli import job_parser, parse_job_config, print_dry_run, run_job
from ambient.data import PrepareShardsConfig, prepare_shards
from ambient.data.report import print_summary

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "prepare_demo.yaml")


def main() -> None:
    args = job_parser(__doc__.splitlines()[0]).parse_args()
    config = parse_job_config(PrepareShardsConfig, args, DEFAULT_CONFIG)
    if args.dry_run:
        print_dry_run(config)
        return
    run_job(prepare_and_report, config)


def prepare_and_report(config: PrepareShardsConfig) -> str:
    result = prepare_shards(config)
    print_summary(result.summary)
    return result.manifest_uri


if __name__ == "__main__":
    main()
