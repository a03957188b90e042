"""An SDXL model folder and a published export, checked on disk: no torch, no diffusers, no loading.

A trained export is published (see ``ambient.models.export``): ``<export>/CURRENT.json`` names the
version ``<export>/versions/<id>/`` and lists its files with sizes and SHA-256, and each version holds
the same list as ``ambient_export.json``, written last. ``resolve_export`` is the one rule every
loader applies:

- a folder with ``CURRENT.json`` resolves to the version it names, whose listed files must exist at
  their sizes;
- a folder with ``ambient_export.json`` (a version, loaded directly) must hold the files it lists;
- a folder whose ``ambient_metadata.json`` records ``ambient_export_format`` (written by the exporter)
  but that has neither file is an unpublished export (cut off mid-write, or written in place by an
  older exporter) and is refused;
- any other folder (a base model, a diffusers folder, one with hand-written metadata) loads as it is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

MODEL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
COMPONENTS = (*MODEL_COMPONENTS, "tokenizer", "tokenizer_2", "scheduler")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' name for LoRA weights
METADATA_FILE = "ambient_metadata.json"  # an export's ambient metadata
LORA_DIR = "lora"
PIPELINE_EXPORT = "pipeline"  # export_kind of a complete diffusers folder
ADAPTER_EXPORT = "lora_adapter"  # export_kind of a LoRA run's adapter alone (the base is referenced)
POINTER_FILE = "CURRENT.json"  # an export's pointer to its published version
MANIFEST_FILE = "ambient_export.json"  # a version's completion marker: its files, sizes, SHA-256
VERSIONS_DIR = "versions"
EXPORT_FORMAT_KEY = "ambient_export_format"  # in the metadata of every folder the exporter writes


def adapter_base(path: str | Path) -> str | None:
    """The base model an adapter export refers to; None for any other folder."""
    file = Path(path) / METADATA_FILE
    if not file.is_file():
        return None
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from e
    if meta.get("export_kind") != ADAPTER_EXPORT:
        return None
    if not meta.get("base_model"):
        raise ValueError(f"{file} is a LoRA adapter export without base_model: its base is unknown")
    return str(meta["base_model"])


def read_listing(file: Path | str, text: str | None = None) -> dict[str, Any]:
    """A pointer's or manifest's content, checked: a plain version name and relative file paths (a
    crafted pointer cannot reach outside its export). ``text`` is the content when already read."""
    try:
        listing = json.loads(Path(file).read_text() if text is None else text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from e
    version, files = listing.get("version"), listing.get("files")
    if not isinstance(version, str) or not version or "/" in version or version.startswith("."):
        raise ValueError(f"{file} names no valid version (got {version!r})")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{file} lists no files")
    for name, entry in files.items():
        parts = PurePosixPath(name).parts
        if name.startswith("/") or ".." in parts or not isinstance(entry, dict) or "size" not in entry:
            raise ValueError(f"{file} lists {name!r}, which is not a relative path with a size")
    return listing


def check_listed(folder: Path, listing: dict[str, Any], marker: Path, *, hashes: bool = False) -> None:
    """Every file ``listing`` names is in ``folder`` at its size (and SHA-256 when ``hashes``)."""
    for name, entry in sorted(listing["files"].items()):
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(
                f"export {marker.parent}: {marker.name} lists {name}, missing from {folder}: the export "
                "is damaged (re-export it)"
            )
        size = file.stat().st_size
        if size != int(entry["size"]) or (hashes and file_sha256(file) != entry.get("sha256")):
            what = f"{size} bytes, not {entry['size']}" if size != int(entry["size"]) else "another SHA-256"
            raise ValueError(
                f"export {marker.parent}: {folder / name} has {what} as {marker.name} lists: the export "
                "is damaged (re-export it)"
            )


def file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def written_by_exporter(metadata_text: str) -> bool:
    """Whether an ``ambient_metadata.json`` comes from the exporter (then the folder must be published);
    metadata written by hand, without ``ambient_export_format``, marks no export."""
    try:
        meta = json.loads(metadata_text)
    except json.JSONDecodeError:
        return False  # reported as invalid JSON by whoever reads the metadata
    return isinstance(meta, dict) and EXPORT_FORMAT_KEY in meta


def unpublished_error(where: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{where} is an ambient export without {POINTER_FILE} or {MANIFEST_FILE}: it was never "
        "published (an export cut off mid-write, or written in place by an older exporter) and may mix "
        "files of several exports. Re-export it, or, if you know it is whole, publish a copy with "
        f"ambient.models.export.publish_export('{where}', '<new folder or s3:// prefix>')"
    )


def resolve_export(path: str | Path, *, hashes: bool = False) -> Path:
    """The folder to load for ``path`` (see the module docstring): a published export's current
    version, a checked version folder, or ``path`` itself when it is no export."""
    root = Path(path)
    pointer, manifest = root / POINTER_FILE, root / MANIFEST_FILE
    if pointer.is_file():
        listing = read_listing(pointer)
        version = root / VERSIONS_DIR / listing["version"]
        if not version.is_dir():
            raise FileNotFoundError(
                f"export {root}: {POINTER_FILE} names version {listing['version']}, but {version} does not "
                "exist: the export is damaged (re-export it)"
            )
        check_listed(version, listing, pointer, hashes=hashes)
        return version
    if manifest.is_file():
        check_listed(root, read_listing(manifest), manifest, hashes=hashes)
        return root
    metadata = root / METADATA_FILE
    if metadata.is_file() and written_by_exporter(metadata.read_text()):
        raise unpublished_error(str(root))
    return root


def check_model_dir(path: str | Path) -> Path:
    """Validate a local SDXL diffusers folder, or a LoRA adapter export (its ``lora/`` weights and the
    base it names; the base itself is checked when it is loaded); return the folder to load, which is
    a published export's current version (``resolve_export``). Errors name the path and what is
    missing."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"model folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"model path {root} is not a folder (expected a diffusers folder)")
    root = resolve_export(root)
    if adapter_base(root) is not None:
        if not (root / LORA_DIR / LORA_WEIGHTS).is_file():
            raise FileNotFoundError(f"{root} is a LoRA adapter export without {LORA_DIR}/{LORA_WEIGHTS}")
        return root
    index = root / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{root} is not a diffusers folder: {index.name} is missing")
    try:
        listed = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{index} is not valid JSON: {e}") from e
    missing = [c for c in COMPONENTS if c not in listed or listed[c] is None or listed[c][0] is None]
    if missing:
        raise ValueError(f"{index} lists no {', '.join(missing)}: not an SDXL text-to-image folder")
    for name in COMPONENTS:
        if not (root / name).is_dir():
            raise FileNotFoundError(f"{root} lacks the {name}/ folder listed in model_index.json")
    for name in MODEL_COMPONENTS:
        folder = root / name
        if not any(folder.glob("*.safetensors")):
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".ckpt", ".pth"))
            hint = f" (found {', '.join(pickles)}: pickled weights are refused)" if pickles else ""
            raise FileNotFoundError(f"{folder} has no .safetensors weights{hint}")
    return root
