"""Package a pre-trained export as the committed default base model (the last step of `make base-model`).

    python jobs/package_base.py [EXPORT_DIR] [--summary SUMMARY_JSON ...]

Measures the export's prompt adherence, converts its UNet to float16 and writes it with the SHA-256 of
every file to platform/ambient/models/base_weights/, with one training record per --summary (the
stages' runs, in training order). The last line printed is that folder.
"""

from __future__ import annotations

import argparse
import json

from ambient.eval.base_release import release_base
from ambient.models.base_model import read_manifest
from ambient.train.layout import RunLayout

RUNS = "runs/base/ray"  # `make base-model`: run.storage_path of its stages
STAGES = ("base-pretrain", "base-refine")  # `make base-model`: pre-training (two stages of one run), refining


def stage_layout(stage: str) -> RunLayout:
    """Where `make base-model` leaves a stage's run (RUNS taken from the working directory, as it runs)."""
    return RunLayout.of(RUNS, stage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", nargs="?", default=stage_layout(STAGES[-1]).model)
    parser.add_argument(
        "--summary",
        nargs="+",
        default=[stage_layout(stage).summary for stage in STAGES],
        help="the summary.json of each training stage, in order",
    )
    args = parser.parse_args()
    folder = release_base(args.export_dir, args.summary)
    print(json.dumps(read_manifest(folder)["adherence"], indent=2))
    print(folder)


if __name__ == "__main__":
    main()
