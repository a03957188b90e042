"""Where the demo keeps its files: its dataset and its fine-tuning run, named once.

The locations are relative to the directory a job starts in (``make demo`` and the jobs run from the
repository root), as the config defaults and ``jobs/configs/*demo*.yaml`` write them; the functions give
them anchored there, as absolute paths. The demo's export is the model folder of the demo run's
``RunLayout``, not a path built by hand. A unit test keeps the demo configs equal to these names.
"""

from __future__ import annotations

from pathlib import Path

from ambient.config import absolute_path
from ambient.storage import is_s3

DATA_URI = "runs/demo/shards"  # the demo's own dataset: prepared automatically when missing
RUN_STORAGE_PATH = "runs/ray"  # run.storage_path of the demo's fine-tuning run
RUN_NAME = "demo"  # run.name of the demo's fine-tuning run


def demo_data_uri() -> str:
    """The demo's dataset under the current directory."""
    return absolute_path(DATA_URI)


def is_demo_data_uri(uri: str) -> bool:
    """Whether ``uri`` (a config's, absolute or relative to the current directory) is the demo's dataset."""
    return not is_s3(uri) and absolute_path(uri) == demo_data_uri()


def demo_export() -> Path:
    """The demo run's published export (``RunLayout.model`` of the demo run) under the current directory."""
    from ambient.train.layout import RunLayout  # the train package only when the export is looked up

    return Path(RunLayout.of(absolute_path(RUN_STORAGE_PATH), RUN_NAME).model)
