"""Fine-tune SDXL on noisy-latent shards with the ambient and consistency losses (Ray Train + DeepSpeed).

    python jobs/finetune.py [--config FILE] [--set key.path=value ...] [--dry-run]
    ray job submit --working-dir . -- python jobs/finetune.py --config jobs/configs/sdxl_lora.yaml

With no arguments it runs the demo on a local cluster (creating synthetic shards if absent).
The last line printed is the path or URI of the run's summary.json.
"""

from __future__ import annotations

from pathlib import Path

from ambient import train  # its names load on first use: the config is checked before torch loads
from ambient.cli import job_parser, parse_job_config, print_dry_run, run_job

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "finetune_demo.yaml"


def main() -> None:
    args = job_parser(__doc__.splitlines()[0]).parse_args()
    config = parse_job_config(train.FinetuneConfig, args, str(DEMO_CONFIG))
    if args.dry_run:
        print_dry_run(config)
        return
    run_job(train.run_finetune, config)


if __name__ == "__main__":
    main()
