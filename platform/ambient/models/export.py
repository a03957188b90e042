"""Export a trained UNet as a complete diffusers SDXL folder, with the ambient metadata beside it."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import UNet2DConditionModel
from torch import Tensor

from ..core import SamplingMode, default_sampling_mode
from .loading import ADAPTER_EXPORT, COMPONENTS, LORA_DIR, METADATA_FILE, PIPELINE_EXPORT, check_model_dir
from .lora import has_lora, lora_config, lora_state_dict, merge_lora, save_lora

EXPORT_FORMAT = 1


def _export_metadata(metadata: dict[str, Any], kind: str, has_lora_weights: bool) -> str:
    meta = {
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **metadata,
        "ambient_export_format": EXPORT_FORMAT,
        "export_kind": kind,
        "has_lora": has_lora_weights,
    }
    try:
        return json.dumps(meta, indent=2, sort_keys=True) + "\n"
    except TypeError as e:
        raise ValueError(f"metadata must be JSON-serialisable: {e}") from e


@contextmanager
def _staged(out_dir: str | Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside ``out_dir``, renamed into place when the block ends without error
    (removed otherwise). An existing non-empty ``out_dir`` is refused unless ``overwrite``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"export target {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"export target {out} is not empty (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_pipeline(
    base_model_dir: Path,
    unet: UNet2DConditionModel,
    out_dir: str | Path,
    metadata: dict[str, Any],
    lora_state: dict[str, Tensor] | None = None,
    *,
    lora_settings: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``out_dir``: the base folder's other components, the trained UNet, ``ambient_metadata.json``.

    ``unet`` is the trained UNet. If it still carries LoRA adapters, a merged copy is saved (the
    caller's UNet is left as it is) and its adapters go to ``<out>/lora/`` with their config (rank and
    alpha) unless ``lora_state`` (diffusers-format LoRA weights, e.g. from ``lora_state_dict``) is given;
    pass ``lora_state`` and ``lora_settings`` (``lora_config``) with an already merged UNet to ship
    both. The folder then loads with from_pretrained as a full model, or the base plus
    ``load_lora_weights(<out>/lora)``.

    Atomic: everything is written to a temporary folder beside ``out_dir`` and renamed into place.
    An existing non-empty ``out_dir`` is refused unless ``overwrite``.
    """
    base = check_model_dir(base_model_dir)
    meta_text = _export_metadata(metadata, PIPELINE_EXPORT, lora_state is not None or has_lora(unet))
    if has_lora(unet):
        lora_state = lora_state if lora_state is not None else lora_state_dict(unet)
        lora_settings = lora_settings if lora_settings is not None else lora_config(unet)
        unet = merge_lora(copy.deepcopy(unet))
    if lora_state is not None and lora_settings is None:
        raise ValueError("lora_state needs lora_settings (the adapter's rank and alpha): see lora_config")

    with _staged(out_dir, overwrite) as tmp:
        shutil.copy2(base / "model_index.json", tmp / "model_index.json")
        for name in COMPONENTS:
            if name != "unet":
                shutil.copytree(base / name, tmp / name)
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        if lora_state is not None:
            save_lora(tmp / LORA_DIR, lora_state, lora_settings)
        (tmp / METADATA_FILE).write_text(meta_text)
    return Path(out_dir)


def export_adapter(
    base_model: str,
    unet: UNet2DConditionModel,
    out_dir: str | Path,
    metadata: dict[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``out_dir`` for a LoRA run without copying the base: ``lora/`` (diffusers-format weights
    with the adapter's rank and alpha) and ``ambient_metadata.json`` naming ``base_model`` (a local
    folder or s3:// prefix). ``load_components`` loads it as the base with the adapter folded in; in
    diffusers it is ``from_pretrained(base_model)`` then ``load_lora_weights(<out>/lora)``. Atomic, as
    ``export_pipeline``."""
    if not has_lora(unet):
        raise ValueError("export_adapter needs a UNet that carries LoRA adapters")
    meta_text = _export_metadata({**metadata, "base_model": str(base_model)}, ADAPTER_EXPORT, True)
    with _staged(out_dir, overwrite) as tmp:
        save_lora(tmp / LORA_DIR, lora_state_dict(unet), lora_config(unet))
        (tmp / METADATA_FILE).write_text(meta_text)
    return Path(out_dir)


def _move_into_place(tmp: Path, out: Path) -> None:
    """rename(2) replaces a missing or empty folder atomically; a full one is moved aside first."""
    if out.is_dir() and any(out.iterdir()):
        old = out.with_name(f".{out.name}.old-{time.time_ns()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.replace(out)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``ambient_metadata.json`` of an exported folder."""
    file = Path(path) / METADATA_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{Path(path)} has no {METADATA_FILE} (not an ambient export?)")
    return json.loads(file.read_text())


@dataclass(frozen=True)
class ExportSampling:
    """How an export is sampled by default, from its metadata."""

    sigma_n: float
    trained_with_consistency: bool
    mode: SamplingMode


def sampling_defaults(metadata: dict[str, Any]) -> ExportSampling:
    """The export's recorded ``default_sampling_mode`` when it has one, else the rule applied to its
    ``sigma_n`` and ``trained_with_consistency``; no metadata at all is a clean model (full sampling)."""
    sigma_n = float(metadata.get("sigma_n") or 0.0)
    consistent = bool(metadata.get("trained_with_consistency", False))
    recorded = metadata.get("default_sampling_mode")
    if recorded is not None and recorded not in ("full", "early_stop"):
        raise ValueError(
            f"{METADATA_FILE}: default_sampling_mode must be full or early_stop, got {recorded!r}"
        )
    mode = recorded or default_sampling_mode(sigma_n, consistent)
    return ExportSampling(sigma_n=sigma_n, trained_with_consistency=consistent, mode=mode)
