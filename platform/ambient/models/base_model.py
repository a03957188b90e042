"""The default base model: the tiny SDXL-architecture pipeline, pre-trained to draw the synthetic world.

Real users fine-tune a pre-trained SDXL; the embedded default does the same with a tiny model whose
UNet was pre-trained by the platform's own jobs (clean base-world shards, then a full fine-tune from a
random UNet; ``make base-model`` reproduces it). Its weights are committed beside this module
(``base_weights/``: the UNet in float16 to stay small, everything else as trained) with the SHA-256 of
every file in ``BASE.json``. ``ensure_default_model()`` checks those hashes and writes a float32
diffusers folder into the cache once; every ``model: null`` in a config means that folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch

from ambient.storage import local_folder_atomic

from .vae_pretrain import default_cache_dir, file_lock

logger = logging.getLogger(__name__)

BASE_DIR = Path(__file__).resolve().parent / "base_weights"
MANIFEST = "BASE.json"
BASE_NAME = "tiny-sdxl-base"
HASHED_SUFFIXES = (".safetensors", ".json", ".txt")


class BaseModelError(ValueError):
    """The committed base model is missing or does not match its recorded hashes."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _weight_files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in HASHED_SUFFIXES and p.name != MANIFEST
    )


def read_manifest(folder: Path = BASE_DIR) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise BaseModelError(
            f"no base model at {folder}: {MANIFEST} is missing (run `make base-model`)"
        ) from None
    except ValueError as err:
        raise BaseModelError(f"{folder / MANIFEST} is not valid JSON: {err}") from None


def verify_base(folder: Path = BASE_DIR) -> dict:
    """The manifest of the committed base model, after checking every file against its SHA-256."""
    manifest = read_manifest(folder)
    recorded: dict[str, str] = manifest.get("files", {})
    present = _weight_files(folder)
    if unlisted := sorted(set(present) - set(recorded)):
        raise BaseModelError(f"base model {folder}: files not in {MANIFEST}: {', '.join(unlisted)}")
    for name, expected in sorted(recorded.items()):
        path = folder / name
        if not path.is_file():
            raise BaseModelError(f"base model {folder}: {name} is missing")
        if (actual := sha256_file(path)) != expected:
            raise BaseModelError(
                f"base model file {path} does not match its recorded SHA-256 ({actual[:12]} != "
                f"{expected[:12]}): corrupted, or a Git LFS pointer instead of the weights"
            )
    return manifest


def content_digest(manifest: dict) -> str:
    files = manifest.get("files", {})
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def ensure_default_model(cache_dir: Path | None = None) -> Path:
    """Path of a float32 diffusers folder of the committed base model, written into the cache once.

    ``cache_dir`` defaults to $AMBIENT_CACHE_DIR or ~/.cache/ambient. The folder name carries the
    content hash, so a new base replaces nothing in use; it appears atomically (temp folder + rename).
    """
    manifest = verify_base()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{BASE_NAME}-{content_digest(manifest)[:12]}"
    if (final / MANIFEST).is_file():
        return final
    with file_lock(root / f"{final.name}.lock"):
        if (final / MANIFEST).is_file():
            return final
        from diffusers import StableDiffusionXLPipeline

        with local_folder_atomic(final) as tmp:
            pipe = StableDiffusionXLPipeline.from_pretrained(BASE_DIR, torch_dtype=torch.float32)
            pipe.save_pretrained(tmp, safe_serialization=True)
            shutil.copy2(BASE_DIR / MANIFEST, tmp / MANIFEST)  # last: marks the folder complete
    logger.info("base model cached at %s", final)
    return final


def package_base(export_dir: str | Path, provenance: dict, out_dir: Path = BASE_DIR) -> Path:
    """Write the exported pipeline at ``export_dir`` as the committed base (UNet in float16) with the
    SHA-256 of every file and ``provenance`` (command, training summary) in BASE.json."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(export_dir, torch_dtype=torch.float32)
    pipe.unet.to(torch.float16)
    out_dir = Path(out_dir)
    with local_folder_atomic(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        files = {name: sha256_file(tmp / name) for name in _weight_files(tmp)}
        manifest = {"name": BASE_NAME, "files": files, **provenance}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out_dir


def main() -> None:
    """``python -m ambient.models.base_model untrained`` prints the untrained model's path (for
    ``make base-model``); with no argument, the default base model's."""
    import sys

    from .vae_pretrain import ensure_untrained_model

    which = sys.argv[1] if len(sys.argv) > 1 else "base"
    if which not in ("base", "untrained"):
        raise SystemExit(f"usage: python -m ambient.models.base_model [base|untrained], got {which!r}")
    print(ensure_untrained_model() if which == "untrained" else ensure_default_model())


if __name__ == "__main__":
    main()
