"""Fine-tuning test helpers: a short demo-config run (``make_config``), its summary and exported UNet,
and the rows each attempt trained on (``recorded_rows``, ``coverage``) for the exact-resume checks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

from ambient.config import load_config
from ambient.storage import file_infos, join, read_text
from ambient.train import FinetuneConfig
from ambient.train.layout import RunLayout

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "jobs" / "configs" / "finetune_demo.yaml"
EPOCH_ROWS = 64  # demo_shards: 64 rows; 2 workers x batch 4 = 8 rows a step, 8 steps an epoch


def make_config(storage: Path, model: str, shards: str, name: str, **values) -> FinetuneConfig:
    overrides = {
        "model.path": model,
        "data.uri": shards,
        "data.prepare_if_missing": False,
        "run.name": name,
        "run.storage_path": str(storage),
        "train.batch_size": 4,
        "train.max_steps": 24,
        "train.checkpoint_every": 12,
        "train.log_every": 2,
        "validation.every_steps": 24,
        "validation.num_steps": 4,
        "validation.prompts": "[a red circle on a blue background, a green square on a white background]",
        "showcase.enabled": False,
        "tracking.tensorboard": False,  # on in the tests that read it (test_finetune.py)
        **values,
    }
    return load_config(FinetuneConfig, DEMO_CONFIG, [f"{k}={v}" for k, v in overrides.items()])


def read_summary(uri: str) -> dict:
    return json.loads(Path(uri).read_text())


def unet_weights(model_dir: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "unet" / "diffusion_pytorch_model.safetensors"))


def recorded_rows(layout: RunLayout, storage=None) -> dict[int, dict[int, list[str]]]:
    """{attempt's resume step: {step: ids of all ranks}} from data.record_rows."""
    rows: dict[int, dict[int, list[str]]] = {}
    for rel in file_infos(layout.rows, storage):
        attempt, _rank, step = rel.split("/")
        ids = json.loads(read_text(join(layout.rows, rel), storage))["ids"]
        start, number = int(attempt.removeprefix("from-")), int(step[5:11])
        rows.setdefault(start, {}).setdefault(number, []).extend(ids)
    return rows


def coverage(rows: dict[int, dict[int, list[str]]], resumed_from: int) -> Counter:
    """How often each row was trained on by the final model: the first attempt's steps up to the
    checkpoint it was resumed from, then the resumed attempt's steps."""
    counts: Counter = Counter()
    for step, ids in rows[0].items():
        if step <= resumed_from:
            counts.update(ids)
    for ids in rows[resumed_from].values():
        counts.update(ids)
    return counts
