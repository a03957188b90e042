"""Load an SDXL diffusers folder from a local path: safetensors only (nothing is ever unpickled).

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
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .conditioning import encode_prompts
from .lora import LORA_WEIGHTS, load_lora

MODEL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
COMPONENTS = (*MODEL_COMPONENTS, "tokenizer", "tokenizer_2", "scheduler")
METADATA_FILE = "ambient_metadata.json"  # an export's ambient metadata
LORA_DIR = "lora"
PIPELINE_EXPORT = "pipeline"  # export_kind of a complete diffusers folder
ADAPTER_EXPORT = "lora_adapter"  # export_kind of a LoRA run's adapter alone (the base is referenced)
POINTER_FILE = "CURRENT.json"  # an export's pointer to its published version
MANIFEST_FILE = "ambient_export.json"  # a version's completion marker: its files, sizes, SHA-256
VERSIONS_DIR = "versions"
EXPORT_FORMAT_KEY = "ambient_export_format"  # in the metadata of every folder the exporter writes


@dataclass
class TextEncoders:
    """SDXL's two tokenizers and frozen CLIP text encoders: captions -> (prompt_embeds, pooled)."""

    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_prompts(
            [self.tokenizer, self.tokenizer_2], [self.text_encoder, self.text_encoder_2], captions
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEncoders:
        for encoder in (self.text_encoder, self.text_encoder_2):
            encoder.requires_grad_(False).eval().to(device=device, dtype=dtype)
        return self


@dataclass
class SDXLComponents:
    """The parts of an SDXL pipeline, loaded one by one (training workers need no pipeline object).
    The text encoders and tokenizers are None where a run trains on precomputed text embeddings."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel | None
    text_encoder_2: CLIPTextModelWithProjection | None
    tokenizer: CLIPTokenizer | None
    tokenizer_2: CLIPTokenizer | None
    scheduler: EulerDiscreteScheduler

    @property
    def text_encoders(self) -> TextEncoders:
        """The text half, for encoding captions; an error names what to do when it was not loaded."""
        if self.text_encoder is None or self.text_encoder_2 is None:
            raise ValueError(
                "no text encoders loaded (components loaded with text_encoders=False): pass precomputed "
                "text embeddings instead of captions"
            )
        return TextEncoders(self.tokenizer, self.tokenizer_2, self.text_encoder, self.text_encoder_2)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> SDXLComponents:
        for name in MODEL_COMPONENTS:
            module = getattr(self, name)
            if module is not None:
                module.to(device=device, dtype=dtype)
        return self

    @classmethod
    def from_pipeline(cls, pipe: StableDiffusionXLPipeline) -> SDXLComponents:
        return cls(**{f.name: getattr(pipe, f.name) for f in fields(cls)})


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


def _local_base(adapter_dir: Path, base: str) -> Path:
    """The adapter's base model as a local folder (an s3:// base is fetched into the cache)."""
    from .source import resolve_model  # source builds on this module

    try:
        return resolve_model(base)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"LoRA adapter export {adapter_dir}: its base model {base}: {err}") from None


def load_pipeline(path: str | Path, dtype: torch.dtype = torch.float32) -> StableDiffusionXLPipeline:
    """StableDiffusionXLPipeline from a local diffusers folder (local paths only; S3 is fetched elsewhere).
    A LoRA adapter export loads as its base with the adapter folded in."""
    root = check_model_dir(path)
    base = adapter_base(root)
    pipe = StableDiffusionXLPipeline.from_pretrained(
        _local_base(root, base) if base else root, dtype=dtype, use_safetensors=True, local_files_only=True
    )
    if base:
        load_lora(pipe.unet, root / LORA_DIR)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_text_encoders(path: str | Path, dtype: torch.dtype = torch.float32) -> TextEncoders:
    """The tokenizers and text encoders of a local diffusers folder, or of the folder holding only
    those four subfolders (what encode.py stages from S3); an adapter export's are its base's."""
    root = resolve_export(path) if Path(path).is_dir() else Path(path)
    base = adapter_base(root) if root.is_dir() else None
    if base is not None:
        root = _local_base(root, base)
    weights = {"dtype": dtype, "use_safetensors": True, "local_files_only": True}
    return TextEncoders(
        tokenizer=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True),
        tokenizer_2=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer_2", local_files_only=True),
        text_encoder=CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **weights),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
            root, subfolder="text_encoder_2", **weights
        ),
    )


def load_components(
    path: str | Path, dtype: torch.dtype = torch.float32, *, text_encoders: bool = True
) -> SDXLComponents:
    """The seven SDXL components of a local diffusers folder, each loaded on its own. A LoRA adapter
    export loads as its base with the adapter folded into the UNet. ``text_encoders=False`` leaves the
    text encoders and tokenizers None (a run on precomputed text embeddings never needs them)."""
    root = check_model_dir(path)
    base = adapter_base(root)
    if base is not None:
        comps = load_components(_local_base(root, base), dtype, text_encoders=text_encoders)
        load_lora(comps.unet, root / LORA_DIR)
        return comps
    weights = {"dtype": dtype, "use_safetensors": True, "local_files_only": True}
    text = load_text_encoders(root, dtype) if text_encoders else None
    return SDXLComponents(
        unet=UNet2DConditionModel.from_pretrained(root, subfolder="unet", **weights),
        vae=AutoencoderKL.from_pretrained(root, subfolder="vae", **weights),
        text_encoder=text.text_encoder if text else None,
        text_encoder_2=text.text_encoder_2 if text else None,
        tokenizer=text.tokenizer if text else None,
        tokenizer_2=text.tokenizer_2 if text else None,
        # Only alphas_cumprod is read from the scheduler (the samplers are ambient.core's), so any
        # DDPM-family scheduler config loads as Euler.
        scheduler=EulerDiscreteScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True),
    )
