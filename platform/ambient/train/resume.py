"""What a resumed run must match, and what each rank takes from a checkpoint.

A checkpoint stores a data position: the rows of the run's row order consumed so far. That position
means the same rows only over the same dataset and the same row plan, so every checkpoint also stores
the dataset's identity (the SHA-256 of its manifest) and the row plan's (shards, rows per shard, shuffle
seed and window), and a resume over anything else is refused, naming both. Each rank's random state
(its training generator and torch's global generator) is saved too, so that a resumed run draws the same
noise, timesteps, caption dropouts and consistency draws as an uninterrupted one. On resume a rank reads
only its own ZeRO partition and the shared files of a checkpoint, not every rank's.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ambient.data.row_stream import StreamPlan
from ambient.data.schema import MANIFEST_NAME
from ambient.storage import StorageConfig, exists, join, read_bytes, read_text

RNG_DIR = "rng"
STATE_FILE = "train_state.json"  # the loop's state in a checkpoint (ambient.train.checkpointing)
# DeepSpeed's per-rank files: ZeRO optimizer partitions and (ZeRO-3) model partitions.
_RANK_FILE = re.compile(r"(?:^|/)(?:bf16_)?zero_pp_rank_(\d+)_")


class ResumeMismatchError(RuntimeError):
    """The checkpoint was made over another dataset or row plan than the run has now."""


@dataclass(frozen=True)
class DataIdentity:
    manifest_sha256: str
    row_plan_sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"manifest_sha256": self.manifest_sha256, "row_plan_sha256": self.row_plan_sha256}


def manifest_sha256(data_uri: str, storage: StorageConfig | None) -> str:
    return hashlib.sha256(read_bytes(join(data_uri, MANIFEST_NAME), storage)).hexdigest()


def row_plan_sha256(stream: StreamPlan | None, split: str) -> str:
    """The row order's definition: which shards in which order with how many rows, and how they are
    shuffled (the dataset's location is left out: a copied dataset keeps its plan)."""
    if stream is None:
        return hashlib.sha256(json.dumps({"split": split}).encode()).hexdigest()
    plan = {
        "split": split,
        "files": list(stream.files),
        "rows": [stream.rows[f] for f in stream.files],
        "shuffle_seed": stream.shuffle_seed,
        "window_rows": stream.window_rows,
    }
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def check_identity(saved: dict | None, current: DataIdentity, checkpoint: str) -> None:
    """Refuse a resume whose checkpoint names another dataset or row plan (or none)."""
    if saved is None:
        raise ResumeMismatchError(
            f"checkpoint {checkpoint} records no dataset identity, so its data position cannot be checked "
            "against the dataset: start a new run (another run.name) or remove the run's checkpoints"
        )
    for key, label in (("manifest_sha256", "dataset (manifest)"), ("row_plan_sha256", "row plan")):
        if saved.get(key) != getattr(current, key):
            raise ResumeMismatchError(
                f"checkpoint {checkpoint} was made over another {label}: {key} {saved.get(key)} in the "
                f"checkpoint, {getattr(current, key)} now. Its data position would name other rows; resume "
                "over the data the run started with, or start a new run (another run.name)"
            )


def current_identity(data_uri: str, storage: StorageConfig | None, stream: StreamPlan | None, split: str):
    return DataIdentity(manifest_sha256(data_uri, storage), row_plan_sha256(stream, split))


def check_latest_checkpoint(
    snapshot_uri: str, run_dir: str, current: DataIdentity, storage: StorageConfig | None
) -> None:
    """On the driver, before any worker starts: the checkpoint a run would resume from (the latest in
    Ray Train's snapshot at ``snapshot_uri``) was made over the data the run has now."""
    if not exists(snapshot_uri, storage):
        return  # a new run
    latest = json.loads(read_text(snapshot_uri, storage)).get("latest_checkpoint_result") or {}
    name = latest.get("checkpoint_dir_name")
    if not name:
        return
    checkpoint = join(run_dir, name)
    state = json.loads(read_text(join(checkpoint, STATE_FILE), storage))
    check_identity(state.get("data_identity"), current, checkpoint)


def saved_state(checkpoint) -> dict:
    """The loop state of a Ray Train checkpoint, read in place (before anything is downloaded)."""
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path.rstrip('/')}/{STATE_FILE}") as f:
        return json.loads(f.read())


# ---- random state ------------------------------------------------------------------------------


def rng_file(rank: int) -> str:
    return f"{RNG_DIR}/rank-{rank}.safetensors"


def save_rng(directory: Path, rank: int, gen: torch.Generator) -> None:
    path = directory / rng_file(rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"generator": gen.get_state(), "torch_global": torch.get_rng_state()}, str(path))


def read_rng(directory: Path, rank: int) -> dict[str, torch.Tensor] | None:
    """This rank's saved generator states; None when the checkpoint holds none for this rank (one of
    another world size: the caller keeps its seeded generators)."""
    path = directory / rng_file(rank)
    return load_file(str(path)) if path.exists() else None


def apply_rng(state: dict[str, torch.Tensor], gen: torch.Generator) -> None:
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_global"])


def restore_rng(directory: Path, rank: int, gen: torch.Generator) -> bool:
    """Restore this rank's generators from the checkpoint folder; False when it holds none for it."""
    state = read_rng(directory, rank)
    if state is not None:
        apply_rng(state, gen)
    return state is not None


# ---- a rank's share of a checkpoint -------------------------------------------------------------


def needed_by(relative_path: str, rank: int) -> bool:
    """Whether ``rank`` reads this checkpoint file: shared files and its own partition and RNG state."""
    match = _RANK_FILE.search(relative_path)
    if match is not None:
        return int(match.group(1)) == rank
    if relative_path.startswith(f"{RNG_DIR}/"):
        return relative_path == rng_file(rank)
    return True


@contextmanager
def rank_checkpoint_dir(checkpoint, rank: int, world: int, saved_world: int | None) -> Iterator[Path]:
    """A local folder with what ``rank`` needs of a Ray Train checkpoint. A local checkpoint is used in
    place; a remote one is downloaded without the other ranks' partitions, unless the world size changed
    (DeepSpeed then reads every partition)."""
    import pyarrow.fs as pafs

    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem) or saved_world != world:
        with checkpoint.as_directory() as folder:
            yield Path(folder)
        return
    fs, root = checkpoint.filesystem, checkpoint.path.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    with tempfile.TemporaryDirectory(prefix="ambient-resume-") as local:
        for info in infos:
            relative = info.path[len(root) + 1 :]
            if info.type != pafs.FileType.File or not needed_by(relative, rank):
                continue
            target = Path(local) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(info.path, str(target), source_filesystem=fs)
        yield Path(local)
