"""Export a trained UNet as a complete diffusers SDXL folder, with the ambient metadata beside it."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from torch import Tensor

from ..core import SamplingMode, default_sampling_mode
from .loading import COMPONENTS, check_model_dir
from .lora import has_lora, lora_state_dict, merge_lora

METADATA_FILE = "ambient_metadata.json"
LORA_DIR = "lora"
EXPORT_FORMAT = 1


def export_pipeline(
    base_model_dir: Path,
    unet: UNet2DConditionModel,
    out_dir: str | Path,
    metadata: dict[str, Any],
    lora_state: dict[str, Tensor] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``out_dir``: the base folder's other components, the trained UNet, ``ambient_metadata.json``.

    ``unet`` is the trained UNet. If it still carries LoRA adapters, a merged copy is saved (the
    caller's UNet is left as it is) and its adapters go to ``<out>/lora/`` unless ``lora_state``
    (diffusers-format LoRA weights, e.g. from ``lora_state_dict``) is given; pass ``lora_state`` with
    an already merged UNet to ship both. The folder then loads with from_pretrained as a full model,
    or the base plus ``load_lora_weights(<out>/lora)``.

    Atomic: everything is written to a temporary folder beside ``out_dir`` and renamed into place.
    An existing non-empty ``out_dir`` is refused unless ``overwrite``.
    """
    base = check_model_dir(base_model_dir)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"export target {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"export target {out} is not empty (pass overwrite=True to replace it)")
    meta = {
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **metadata,
        "ambient_export_format": EXPORT_FORMAT,
        "has_lora": lora_state is not None or has_lora(unet),
    }
    try:
        meta_text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    except TypeError as e:
        raise ValueError(f"metadata must be JSON-serialisable: {e}") from e

    if has_lora(unet):
        if lora_state is None:
            lora_state = lora_state_dict(unet)
        unet = merge_lora(copy.deepcopy(unet))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        shutil.copy2(base / "model_index.json", tmp / "model_index.json")
        for name in COMPONENTS:
            if name != "unet":
                shutil.copytree(base / name, tmp / name)
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        if lora_state is not None:
            StableDiffusionXLPipeline.save_lora_weights(
                tmp / LORA_DIR, unet_lora_layers=lora_state, safe_serialization=True
            )
        (tmp / METADATA_FILE).write_text(meta_text)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


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
