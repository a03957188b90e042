"""VAE encoding and frozen corruption in one step, so that clean latents never leave the worker process.

The encoder runs as ``Dataset.map_batches`` tasks (``encode_batch``): each Ray worker process loads the
VAE once and keeps it for later tasks, with a GPU per task when the cluster has one. Tasks rather than an
actor pool: Ray Data hands an actor pool its transform by object reference, which makes Ray's core worker
log an error-level line on every run (ray-project/ray#53727), and a failed task is simply retried. It
encodes ``micro_batch`` images per VAE call (a task's batch may be much larger) and returns only the
noisy tensor ``y = x0 + sigma_n z`` with z frozen per (row id, noise seed) by
``ambient.core.corrupt``. With ``encode.text_embeddings`` the same task also runs both text encoders on
the captions and returns their output as float16 (``TextEncoderSpec``)."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ambient.core import corrupt
from ambient.storage import StorageConfig, download_prefix, is_s3, join, read_bytes, read_text

from .config import ENCODE_MICRO_BATCH
from .schema import POOLED_EMBEDS, PROMPT_EMBEDS, TENSOR_DTYPE, VaeIdentity
from .text import TextShape

TEXT_SUBFOLDERS = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2")


def vae_config(model: str, storage: StorageConfig | None = None) -> dict:
    """The VAE's config.json, read without loading weights (driver-side validation)."""
    from ambient.models.source import files_root  # a published export: its current version

    try:
        return json.loads(read_text(join(files_root(model, storage), "vae", "config.json"), storage))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"encode.model {model} has no vae/config.json: expected a diffusers SDXL model folder"
        ) from None


def downsample_factor(config: dict) -> int:
    return 2 ** (len(config["block_out_channels"]) - 1)


def vae_identity(model: str, storage: StorageConfig | None = None) -> VaeIdentity:
    """What the latents were encoded with, so training can check it uses the same VAE."""
    config = vae_config(model, storage)
    canonical = json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True)
    try:
        weights = read_bytes(join(model, "vae", "diffusion_pytorch_model.safetensors"), storage)
        weights_sha = hashlib.sha256(weights).hexdigest()
    except FileNotFoundError:
        weights_sha = None
    return VaeIdentity(
        model=str(model),
        config_sha256=hashlib.sha256(canonical.encode()).hexdigest(),
        weights_sha256=weights_sha,
        scaling_factor=float(config.get("scaling_factor", 0.18215)),
        shift_factor=config.get("shift_factor"),
        latent_channels=int(config["latent_channels"]),
        downsample_factor=downsample_factor(config),
    )


def describe_vae(vae: VaeIdentity | None) -> str:
    """One line naming a VAE by what decides its latent space."""
    if vae is None:
        return "no VAE recorded"
    weights = vae.weights_sha256[:12] if vae.weights_sha256 else "unknown"
    return (
        f"{vae.model} ({vae.latent_channels} channels, /{vae.downsample_factor}, scaling {vae.scaling_factor:g}, "
        f"shift {vae.shift_factor}, config {vae.config_sha256[:12]}, weights {weights})"
    )


def vae_differences(recorded: VaeIdentity | None, loaded: VaeIdentity) -> list[str]:
    """What differs between the VAE a dataset records and the model's (its folder name never counts:
    the same VAE may live in several model folders). Weights count when both hashes are known."""
    if recorded is None:
        return ["the dataset records no VAE"]
    fields = ["latent_channels", "downsample_factor", "scaling_factor", "shift_factor", "config_sha256"]
    if recorded.weights_sha256 and loaded.weights_sha256:
        fields.append("weights_sha256")
    return [name for name in fields if getattr(recorded, name) != getattr(loaded, name)]


def load_vae(model: str, storage: StorageConfig | None = None, device: str = "cpu"):
    from diffusers import AutoencoderKL

    from ambient.models.source import files_root  # a published export: its current version

    model = files_root(model, storage)
    if is_s3(model):  # the weights are read into memory; the downloaded copy goes
        with tempfile.TemporaryDirectory(prefix="ambient-vae-") as staging:
            download_prefix(join(model, "vae"), Path(staging) / "vae", storage)
            vae = AutoencoderKL.from_pretrained(staging, subfolder="vae", use_safetensors=True)
    else:
        vae = AutoencoderKL.from_pretrained(model, subfolder="vae", use_safetensors=True)
    return vae.to(device).eval().requires_grad_(False)


def load_text_model(model: str, storage: StorageConfig | None = None, device: str = "cpu"):
    """``ambient.models.loading.TextEncoders`` of a model folder (an s3:// one is staged, only its
    tokenizers and text encoders), in float32 on ``device``: the embeddings are stored as float16."""
    from ambient.models.loading import load_text_encoders  # diffusers only when captions are encoded
    from ambient.models.source import files_root

    model = files_root(model, storage)
    if is_s3(model):
        with tempfile.TemporaryDirectory(prefix="ambient-text-") as staging:
            for name in TEXT_SUBFOLDERS:
                download_prefix(join(model, name), Path(staging) / name, storage)
            text = load_text_encoders(staging)
    else:
        text = load_text_encoders(model)
    return text.to(device, torch.float32)


def embed_captions(text, captions: list[str], micro_batch: int, shape: TextShape | None = None):
    """(prompt_embeds (N, L, D), pooled (N, D2)) as float16 numpy, ``micro_batch`` captions per call."""
    prompts, pooled = [], []
    for lo in range(0, len(captions), micro_batch):
        p, q = text(list(captions[lo : lo + micro_batch]))
        prompts.append(p.float().cpu().numpy().astype(TENSOR_DTYPE))
        pooled.append(q.float().cpu().numpy().astype(TENSOR_DTYPE))
    out = np.concatenate(prompts), np.concatenate(pooled)
    if shape is not None and (out[0].shape[1:], out[1].shape[1:]) != (
        (shape.length, shape.dim),
        (shape.pooled,),
    ):
        raise ValueError(
            f"text encoders produced {out[0].shape[1:]} and {out[1].shape[1:]}, expected "
            f"{(shape.length, shape.dim)} and {(shape.pooled,)}"
        )
    return out


def embed_texts(
    model: str, storage: StorageConfig | None, captions: list[str], micro_batch: int = ENCODE_MICRO_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """Load ``model``'s text encoders and embed ``captions`` (float16 numpy); GPU when present."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return embed_captions(load_text_model(model, storage, device), captions, micro_batch)


def embed_on_cluster(
    model: str, storage: StorageConfig | None, captions: list[str], num_gpus: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """``embed_texts`` in one Ray task (Ray must be initialised), so the driver never holds the text
    encoders; the same code embeds the dataset's captions."""
    import ray

    task = ray.remote(embed_texts).options(num_cpus=1, num_gpus=num_gpus)
    return ray.get(task.remote(model, storage, list(captions)))


@dataclass(frozen=True)
class TextEncoderSpec:
    """Which text encoders embed the captions (``encode.model``) and what they produce."""

    model: str
    shape: TextShape


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder is built from (small and picklable: it travels with every task)."""

    space: str
    model: str | None
    storage: StorageConfig | None
    sigma_n: float
    seed: int
    shape: tuple[int, ...]
    micro_batch: int = ENCODE_MICRO_BATCH  # images per VAE call (and captions per text-encoder call)
    text: TextEncoderSpec | None = None  # encode.text_embeddings

    def key(self) -> str:
        storage = self.storage.model_dump_json() if self.storage is not None else None
        text = [self.text.model, repr(self.text.shape)] if self.text is not None else None
        return json.dumps(
            [
                self.space,
                self.model,
                storage,
                self.sigma_n,
                self.seed,
                list(self.shape),
                self.micro_batch,
                text,
            ]
        )


_PROCESS_ENCODER: dict[str, NoisyEncoder] = {}  # this worker process's encoder, by EncoderSpec.key()


def encode_batch(batch: dict[str, np.ndarray], spec: EncoderSpec) -> dict[str, np.ndarray]:
    """map_batches function: the batch through this process's encoder for ``spec`` (built on first use;
    one at a time, so a process never holds two VAEs)."""
    key = spec.key()
    encoder = _PROCESS_ENCODER.get(key)
    if encoder is None:
        _PROCESS_ENCODER.clear()
        encoder = _PROCESS_ENCODER[key] = NoisyEncoder(
            spec.space,
            spec.model,
            spec.storage,
            spec.sigma_n,
            spec.seed,
            spec.shape,
            spec.micro_batch,
            spec.text,
        )
    return encoder(batch)


class NoisyEncoder:
    """map_batches callable: ``pixels`` -> ``latent`` (or noisy ``image``), never the clean tensor; with
    ``text``, ``caption`` -> ``prompt_embeds`` and ``pooled_prompt_embeds`` too."""

    def __init__(
        self,
        space: str,
        model: str | None,
        storage: StorageConfig | None,
        sigma_n: float,
        seed: int,
        shape: tuple[int, ...],
        micro_batch: int = ENCODE_MICRO_BATCH,
        text: TextEncoderSpec | None = None,
    ):
        if micro_batch < 1:
            raise ValueError(f"encode.micro_batch must be >= 1, got {micro_batch}")
        self.space, self.sigma_n, self.seed, self.shape = space, sigma_n, seed, tuple(shape)
        self.micro_batch = micro_batch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.vae = load_vae(model, storage, self.device) if space == "latent" else None
        self.text_shape = text.shape if text is not None else None
        self.text = load_text_model(text.model, storage, self.device) if text is not None else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = np.array([not r for r in batch["reject"]], dtype=bool)
        ids = [str(i) for i in batch["id"]]
        out = {k: v for k, v in batch.items() if k != "pixels"}
        # Rejected rows keep a zero placeholder of the same shape (one tensor type per column); the
        # writer drops them.
        tensor = np.zeros((len(ids), *self.shape), np.float16)
        out["tensor"] = tensor
        if self.text is not None:
            self._embed(batch["caption"], keep, out)
        if not keep.any():
            return out
        x0 = torch.from_numpy(np.asarray(batch["pixels"][keep], np.float32))
        if self.vae is not None:
            from ambient.models.vae import encode_images  # diffusers only in latent space

            x0 = encode_images(self.vae, x0, self.micro_batch).float().cpu()
        kept_ids = [i for i, k in zip(ids, keep, strict=True) if k]
        y = corrupt(x0, self.sigma_n, kept_ids, self.seed)
        if tuple(y.shape[1:]) != self.shape:
            raise ValueError(f"encoder produced {tuple(y.shape[1:])}, expected {self.shape}")
        tensor[keep] = y.numpy().astype(np.float16)
        return out

    def _embed(self, captions: np.ndarray, keep: np.ndarray, out: dict[str, np.ndarray]) -> None:
        """The kept rows' text embeddings into ``out`` (zero placeholders for rejected rows)."""
        shape = self.text_shape
        prompts = np.zeros((len(keep), shape.length, shape.dim), np.float16)
        pooled = np.zeros((len(keep), shape.pooled), np.float16)
        if keep.any():
            kept = [str(c) for c, k in zip(captions, keep, strict=True) if k]
            prompts[keep], pooled[keep] = embed_captions(self.text, kept, self.micro_batch, shape)
        out[PROMPT_EMBEDS], out[POOLED_EMBEDS] = prompts, pooled
