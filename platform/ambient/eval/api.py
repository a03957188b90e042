"""The audit as a library: audit one or several models on the same items, and the sweep's single score.

run_audit(cfg) -> Path                     the whole audit; returns the report's Markdown path
audit_model(comps, items, originals, space, cfg) -> ModelAudit
memorization_score(model_dir, items, *, config=None) -> float   (higher = more memorization)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ambient.core.sampling_spec import SamplingSpec, sampling_spec
from ambient.models.export import read_metadata, sampling_defaults
from ambient.models.loading import SDXLComponents, load_components
from ambient.models.ref import ModelRef
from ambient.models.vae import decode_latents, encode_images
from ambient.storage import StorageConfig
from ambient.threads import torch_threads

from .adherence import parse_prompt, prompt_adherence
from .attack import AttackResult, psnr, reconstruction_attack, to_uint8
from .config import AuditConfig, GenerationSection, ItemsSection, check_paths
from .features import FeatureSpace, build_extractor
from .generation import GenerationResult, generation_similarity
from .items import AuditItems, from_dataset, load_items
from .quality import quality_metrics
from .results import NEAR_DUPLICATE, AdherenceScore, GenerationSampling, QualitySummary, VaeCeiling


@dataclass
class ModelAudit:
    label: str
    path: str
    attacks: list[AttackResult]
    vae_ceiling: VaeCeiling
    generation: GenerationResult | None = None
    generation_sampling: GenerationSampling | None = None
    quality: QualitySummary | None = None
    prompt_adherence: AdherenceScore | None = None  # generations of synthetic-world captions only
    score: float = float("nan")
    score_name: str = ""


def generation_spec(gen: GenerationSection, path: str) -> SamplingSpec:
    """How the generations of the model at ``path`` are sampled: its own default (from its
    ambient_metadata.json; none = a clean model) unless ``generation.mode`` / ``generation.sigma_n``
    say otherwise, with ``generation.steps`` and ``generation.guidance``."""
    try:
        own = sampling_defaults(read_metadata(path)) if path else sampling_defaults({})
    except FileNotFoundError:
        own = sampling_defaults({})
    sigma_n = own.sigma_n if gen.sigma_n is None else gen.sigma_n
    return sampling_spec(gen.mode, sigma_n, own.mode, steps=gen.steps, guidance=gen.guidance)


def default_resolution(comps: SDXLComponents) -> int:
    return int(comps.unet.config.sample_size) * comps.vae_scale_factor


def originals_of(items: AuditItems, comps: SDXLComponents, micro_batch: int | None = None) -> Tensor:
    """The originals as pixels in [-1, 1]: given, or decoded from clean latents with the model's VAE
    (``micro_batch`` latents per VAE call; None: all at once)."""
    if items.pixels is not None:
        return items.pixels.float()
    return decode_latents(comps.vae, items.latents, micro_batch).float() / 127.5 - 1


def score_of(audit: ModelAudit, score: str) -> float:
    if score == "tweedie":
        return float(audit.attacks[0].tweedie_similarity.mean())
    if score == "sample":
        sims = audit.attacks[0].sample_similarity
        if sims is None:
            raise ValueError("score 'sample' needs attack.sample: true")
        return float(sims.mean())
    if audit.generation is None:
        raise ValueError("score 'generation' needs generation.n > 0")
    return audit.generation.fraction_above(NEAR_DUPLICATE)


@torch.no_grad()
def audit_model(
    comps: SDXLComponents,
    items: AuditItems,
    originals: Tensor,
    space: FeatureSpace,
    cfg: AuditConfig,
    *,
    label: str = "model",
    path: str = "",
) -> ModelAudit:
    comps.unet.eval()
    truth = to_uint8(originals)
    audit = ModelAudit(
        label=label,
        path=path,
        attacks=[_attack(comps, items, originals, space, cfg, t) for t in cfg.attack.timesteps],
        vae_ceiling=_vae_ceiling(comps, originals, truth, space, cfg.batch_size),
    )
    if cfg.generation.n > 0:
        _audit_generations(audit, comps, items, truth, space, cfg)
    audit.score, audit.score_name = score_of(audit, cfg.score), cfg.score
    return audit


def _vae_ceiling(comps: SDXLComponents, originals: Tensor, truth: Tensor, space: FeatureSpace, batch: int):
    """How close the VAE's own round trip comes to the originals: no model can score above it."""
    round_trip = decode_latents(comps.vae, encode_images(comps.vae, originals, batch), batch)
    return VaeCeiling(
        similarity_mean=float(space.paired(round_trip, truth).mean()),
        psnr_mean=float(psnr(round_trip, truth).mean()),
    )


def _attack(comps, items: AuditItems, originals: Tensor, space: FeatureSpace, cfg: AuditConfig, t: int):
    return reconstruction_attack(
        comps,
        items.ids,
        items.captions,
        originals,
        space,
        timestep=t,
        mask=cfg.attack.mask,
        mask_fraction=cfg.attack.mask_fraction,
        run_sampler=cfg.attack.sample,
        steps=cfg.attack.steps,
        guidance=cfg.attack.guidance,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )


def _audit_generations(
    audit: ModelAudit,
    comps: SDXLComponents,
    items: AuditItems,
    truth: Tensor,
    space: FeatureSpace,
    cfg: AuditConfig,
) -> None:
    """Generations from the training captions: their similarity to the training images, and (when
    asked) their quality and prompt adherence."""
    gen = cfg.generation
    spec = generation_spec(gen, audit.path)
    # The report's sigma_n is the level the generations stopped at (0 for full sampling).
    audit.generation_sampling = GenerationSampling(mode=spec.mode, sigma_n=spec.sigma_stop)
    height, width = truth.shape[-2:]
    audit.generation = generation_similarity(
        comps,
        items.captions,
        space,
        n=gen.n,
        spec=spec,
        seed=cfg.seed,
        height=height,
        width=width,
        thresholds=gen.thresholds,
        batch_size=cfg.batch_size,
    )
    if cfg.quality.enabled:
        audit.quality = quality_metrics(
            audit.generation.images,
            truth,
            inception=cfg.quality.inception,
            reference_stats=cfg.quality.reference_stats,
            batch_size=cfg.batch_size,
        )
    if all(parse_prompt(c) for c in audit.generation.captions):  # the synthetic shape world
        audit.prompt_adherence = prompt_adherence(audit.generation.images, audit.generation.captions)


def _labels(cfg: AuditConfig, paths: list[str]) -> list[str]:
    labels: list[str] = []
    for i, (entry, path) in enumerate(zip(cfg.models, paths, strict=True)):
        label = entry.label or Path(path.rstrip("/")).name or f"model{i}"
        label = re.sub(r"[^A-Za-z0-9._-]+", "-", label)
        labels.append(label if label not in labels else f"{label}-{i}")
    return labels


def run_audit(cfg: AuditConfig) -> Path:
    """Audit every model of ``cfg`` on the same items; write the report; return its Markdown path."""
    from .report import write_report

    check_paths(cfg)
    with torch_threads(cfg.threads):
        storage = cfg.storage.resolved()
        local = [str(ModelRef(m.path, f"models[{i}].path").local(storage)) for i, m in enumerate(cfg.models)]
        paths = [
            m.path or folder for m, folder in zip(cfg.models, local, strict=True)
        ]  # as the user named them
        labels = _labels(cfg, paths)
        audits: list[ModelAudit] = []
        items = originals = space = None
        for label, path, folder in zip(labels, paths, local, strict=True):
            comps = load_components(folder)
            if items is None:
                items = load_items(cfg.items, default_resolution(comps))
                originals = originals_of(items, comps, cfg.batch_size)
                extractor = build_extractor(cfg.features.kind, cfg.features.weights)
                space = FeatureSpace(extractor, to_uint8(originals), cfg.batch_size)
            audits.append(audit_model(comps, items, originals, space, cfg, label=label, path=path))
            del comps
        return write_report(Path(cfg.output_dir), cfg, items, to_uint8(originals), audits)


def memorization_score(
    model_dir: str | None,
    items: AuditItems | ItemsSection | str,
    *,
    config: AuditConfig | None = None,
    storage: StorageConfig | None = None,
) -> float:
    """One number, higher = more memorization, for a sweep trial.

    ``items``: the training items (AuditItems), an ItemsSection, or a shard dataset URI (its first
    ``config.items.count`` rows by id: the synthetic demo's shards are re-rendered, clean-latent shards
    are used as they are; ``storage`` reaches S3). ``config.score`` picks the
    number: "tweedie" (default: the mean feature similarity of the one-step Tweedie reconstruction
    from ``config.attack.timesteps[0]``, 900 by default, to the originals), "sample" (the same after the
    whole sampler) or "generation" (the fraction of generations above ``NEAR_DUPLICATE``). Only what the score needs
    runs: the default costs one UNet pass per item (a few seconds for 8 items of the tiny model on CPU).
    """
    cfg = (config or AuditConfig()).model_copy(deep=True)
    cfg.attack.timesteps = cfg.attack.timesteps[:1]
    cfg.attack.sample = cfg.score == "sample"
    if cfg.score != "generation":
        cfg.generation.n = 0
    cfg.quality.enabled = False
    path = str(ModelRef(None if model_dir is None else str(model_dir)).local(storage))
    with torch_threads(cfg.threads):
        comps = load_components(path)
        if isinstance(items, str):
            items = from_dataset(items, cfg.items.count, None, storage)
        elif isinstance(items, ItemsSection):
            items = load_items(items, default_resolution(comps))
        originals = originals_of(items, comps, cfg.batch_size)
        extractor = build_extractor(cfg.features.kind, cfg.features.weights)
        space = FeatureSpace(extractor, to_uint8(originals), cfg.batch_size)
        return audit_model(comps, items, originals, space, cfg, path=path).score
