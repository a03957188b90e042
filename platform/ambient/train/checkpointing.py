"""Checkpoints: DeepSpeed's own sharded save (every rank writes its part), plus the loop's state.

Every rank saves into its own temporary folder and reports it; Ray Train merges the folders into one
checkpoint directory in the run's storage. A resumed run loads the engine (weights, optimizer, LR
scheduler) and the loop state (step, loss history, EMA) from it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .records import StepRecord
from .resume import STATE_FILE, save_rng

DS_TAG = "ds"
EMA_FILE = "ema.safetensors"


@dataclass
class LoopState:
    step: int = 0
    images_seen: int = 0
    history: list[StepRecord] = field(default_factory=list)  # one record per report step
    resumed_from_step: int | None = None
    resumes: list[int] = field(default_factory=list)  # the step of every checkpoint restore, in order
    data_position: int = 0  # rows of the run's row stream consumed by all ranks (exact split)
    data_identity: dict | None = None  # the dataset's and row plan's hashes (ambient.train.resume)
    world: int | None = None  # the world size that wrote the checkpoint (its ZeRO partitions)


def save(
    engine,
    directory: Path,
    state: LoopState,
    ema: dict[str, torch.Tensor] | None,
    rank: int,
    gen: torch.Generator,
) -> None:
    # Collective: every rank writes its shard. Frozen weights (a LoRA run's base UNet, 10 GB at SDXL's
    # size) come from the base model on resume and are left out.
    engine.save_checkpoint(str(directory), tag=DS_TAG, exclude_frozen_parameters=True)
    save_rng(directory, rank, gen)  # every rank its own draws: a resume continues them exactly
    if rank == 0:
        (directory / STATE_FILE).write_text(json.dumps(asdict(state)))
        if ema is not None:
            save_file({k: v.contiguous() for k, v in ema.items()}, str(directory / EMA_FILE))


def load(engine, directory: Path) -> tuple[LoopState, dict[str, torch.Tensor] | None]:
    # Strict where every weight is trained; a LoRA run's checkpoint holds only its trainable weights.
    strict = all(p.requires_grad for p in engine.module.parameters())
    path, _ = engine.load_checkpoint(str(directory), tag=DS_TAG, load_module_strict=strict)
    if path is None:
        raise RuntimeError(f"checkpoint {directory} holds no DeepSpeed state under tag {DS_TAG!r}")
    raw = json.loads((directory / STATE_FILE).read_text())
    # A history from before the records (its own key names) is read into records too.
    state = LoopState(**{**raw, "history": [StepRecord.from_dict(h) for h in raw.get("history", [])]})
    ema_path = directory / EMA_FILE
    ema = load_file(str(ema_path)) if ema_path.exists() else None
    return state, ema
