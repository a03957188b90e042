"""The audit's results, typed, and the files an audit writes.

report.json is ``AuditResult.to_dict()``; report.md, the benchmarks and the tests read these fields
(never the JSON's keys), and find every file of an audit folder through ``AuditLayout``. Each record's
``to_dict`` writes the keys report.json has always had, and ``from_dict`` reads them back unchanged,
so reports written before these records read as they are. No torch here: a reader of report.json
(a benchmark's report, a test) imports this module alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

# The similarity above which a generation counts as a near-duplicate of a training item: the
# "generation" memorization score and the benchmarks' near-duplicate fraction.
NEAR_DUPLICATE = 0.95
DEFAULT_THRESHOLDS = (0.9, NEAR_DUPLICATE, 0.99)  # generation.thresholds: the fractions reported


def threshold_key(threshold: float) -> str:
    """The key of a threshold in report.json's ``fraction_above`` ("0.95")."""
    return f"{threshold:g}"


def _fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` as keyword arguments of ``cls``; an unknown key raises, naming it (a misspelt writer
    fails here, not as a silently missing number)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; the fields are {sorted(known)}")
    return dict(data)


@dataclass(frozen=True)
class Reconstruction:
    """One reconstruction's numbers over the attacked items."""

    similarity_mean: float
    similarity_max: float
    psnr_mean: float


@dataclass(frozen=True)
class AttackSummary:
    """One reconstruction attack (one timestep) over all items; the sampler's numbers are None when
    ``attack.sample`` is off (and absent from the JSON)."""

    timestep: float
    sigma: float
    mask: str
    tweedie_similarity_mean: float
    tweedie_similarity_max: float
    tweedie_psnr_mean: float
    sample_similarity_mean: float | None = None
    sample_similarity_max: float | None = None
    sample_psnr_mean: float | None = None

    @property
    def tweedie(self) -> Reconstruction:
        return Reconstruction(
            self.tweedie_similarity_mean, self.tweedie_similarity_max, self.tweedie_psnr_mean
        )

    @property
    def sample(self) -> Reconstruction | None:
        if self.sample_similarity_mean is None:
            return None
        return Reconstruction(self.sample_similarity_mean, self.sample_similarity_max, self.sample_psnr_mean)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.sample is None:
            for name in ("sample_similarity_mean", "sample_similarity_max", "sample_psnr_mean"):
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttackSummary:
        return cls(**_fields(cls, data))


@dataclass(frozen=True)
class GenerationSummary:
    """Generation similarity over all generations: ``fraction_above`` maps each threshold (in the
    configured order) to the fraction of generations whose nearest training item is more similar."""

    n: int
    mean_max_similarity: float
    max_similarity: float
    fraction_above: dict[float, float]

    @property
    def thresholds(self) -> list[float]:
        return list(self.fraction_above)

    def above(self, threshold: float) -> float:
        """The fraction above ``threshold``, which must be one the audit measured."""
        key = threshold_key(threshold)
        for t, fraction in self.fraction_above.items():
            if threshold_key(t) == key:
                return fraction
        raise KeyError(
            f"no fraction above {key}: the audit measured {[threshold_key(t) for t in self.thresholds]}"
        )

    def to_dict(self) -> dict[str, Any]:
        above = {threshold_key(t): f for t, f in self.fraction_above.items()}
        return {**dataclasses.asdict(self), "fraction_above": above}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationSummary:
        data = _fields(cls, data)
        return cls(**{**data, "fraction_above": {float(t): f for t, f in data["fraction_above"].items()}})


@dataclass(frozen=True)
class QualitySummary:
    """Fréchet distances of the generations: the built-in one (not FID) and FID where Inception
    weights were given (else None); ``fid_reference`` says where FID's reference statistics came from."""

    n_generated: int
    n_reference: int
    fd_builtin: float | None
    fid: float | None
    fid_reference: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualitySummary:
        return cls(**_fields(cls, data))


@dataclass(frozen=True)
class AdherenceScore:
    """Prompt adherence of a set of images (synthetic shape world; see ambient.eval.adherence)."""

    n: int
    background: float  # fraction of images whose background colour matches the prompt
    foreground: float
    shape: float
    colors: float  # both colours right
    all: float  # all three right
    adherence: float  # mean of the three attribute accuracies

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    summary = to_dict  # the name the showcase and the benchmarks call

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdherenceScore:
        return cls(**_fields(cls, data))


@dataclass(frozen=True)
class VaeCeiling:
    """The VAE round trip alone: the best any reconstruction can score."""

    similarity_mean: float
    psnr_mean: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VaeCeiling:
        return cls(**_fields(cls, data))


@dataclass(frozen=True)
class GenerationSampling:
    """How a model's generations were sampled."""

    mode: str
    sigma_n: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationSampling:
        return cls(**_fields(cls, data))


@dataclass(frozen=True)
class ItemAttack:
    """One attack's per-item numbers, in the order of the report's items (None: no sampler)."""

    timestep: float
    tweedie_similarity: list[float]
    tweedie_psnr: list[float]
    sample_similarity: list[float] | None
    sample_psnr: list[float] | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ItemAttack:
        return cls(**_fields(cls, data))


def _optional(value: Any) -> Any:
    return None if value is None else value.to_dict()


@dataclass(frozen=True)
class ModelResult:
    """One audited model: report.json's entry in ``models``.

    ``quality`` and ``prompt_adherence`` share the JSON's ``quality`` object (the Fréchet numbers, with
    ``prompt_adherence`` inside); either may be absent (quality off; prompts outside the shape world).
    The per-generation lists are present exactly when ``generation`` is.
    """

    label: str
    path: str
    memorization_score: float  # NaN where the score's part did not run
    score: str  # which score: tweedie, sample or generation
    vae_ceiling: VaeCeiling
    attacks: list[AttackSummary]
    generation: GenerationSummary | None
    generation_sampling: GenerationSampling | None
    quality: QualitySummary | None
    prompt_adherence: AdherenceScore | None
    per_item: list[ItemAttack]
    generation_max_similarity: list[float] | None = None
    generation_nearest: list[str] | None = None  # the nearest training item's id, per generation

    def to_dict(self) -> dict[str, Any]:
        data = {
            "label": self.label,
            "path": self.path,
            "memorization_score": self.memorization_score,
            "score": self.score,
            "vae_ceiling": self.vae_ceiling.to_dict(),
            "attacks": [a.to_dict() for a in self.attacks],
            "generation": _optional(self.generation),
            "generation_sampling": _optional(self.generation_sampling),
            "quality": self._quality_dict(),
            "per_item": [p.to_dict() for p in self.per_item],
        }
        if self.generation_max_similarity is not None:
            data["generation_max_similarity"] = self.generation_max_similarity
            data["generation_nearest"] = self.generation_nearest
        return data

    def _quality_dict(self) -> dict[str, Any] | None:
        if self.quality is None and self.prompt_adherence is None:
            return None
        data = self.quality.to_dict() if self.quality is not None else {}
        if self.prompt_adherence is not None:
            data["prompt_adherence"] = self.prompt_adherence.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelResult:
        data = _fields(cls, data)
        quality = dict(data.get("quality") or {})
        adherence = quality.pop("prompt_adherence", None)

        def read(kind: type, value: Any) -> Any:
            return None if value is None else kind.from_dict(value)

        return cls(
            **{
                **data,
                "vae_ceiling": VaeCeiling.from_dict(data["vae_ceiling"]),
                "attacks": [AttackSummary.from_dict(a) for a in data["attacks"]],
                "generation": read(GenerationSummary, data["generation"]),
                "generation_sampling": read(GenerationSampling, data["generation_sampling"]),
                "quality": QualitySummary.from_dict(quality) if quality else None,
                "prompt_adherence": read(AdherenceScore, adherence),
                "per_item": [ItemAttack.from_dict(p) for p in data["per_item"]],
            }
        )


@dataclass(frozen=True)
class AuditedItem:
    id: str
    caption: str


@dataclass(frozen=True)
class AuditResult:
    """report.json: the config as run, the feature space, the items (in order) and every model."""

    config: dict[str, Any]  # the AuditConfig, secrets redacted
    features: str
    items: list[AuditedItem]
    models: list[ModelResult]

    def model(self, label: str) -> ModelResult:
        for entry in self.models:
            if entry.label == label:
                return entry
        raise KeyError(f"no model {label!r} in the audit; its models are {[m.label for m in self.models]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "features": self.features,
            "items": [dataclasses.asdict(item) for item in self.items],
            "models": [m.to_dict() for m in self.models],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditResult:
        data = _fields(cls, data)
        return cls(
            config=data["config"],
            features=data["features"],
            items=[AuditedItem(**item) for item in data["items"]],
            models=[ModelResult.from_dict(m) for m in data["models"]],
        )

    def to_json(self) -> str:
        # default=str: the config may hold paths; NaN (a score that did not run) stays NaN, as before.
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    @classmethod
    def read(cls, path: str | Path) -> AuditResult:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class AuditLayout:
    """Every file of an audit folder, named once: the audit writes through it, readers find files
    through it."""

    root: Path

    REPORT_JSON: ClassVar[str] = "report.json"
    REPORT_MD: ClassVar[str] = "report.md"
    HISTOGRAM: ClassVar[str] = "generation_similarity.png"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def report_json(self) -> Path:
        return self.root / self.REPORT_JSON

    @property
    def report_md(self) -> Path:
        return self.root / self.REPORT_MD

    @property
    def histogram(self) -> Path:
        """generation_similarity.png: every model's max-similarity histogram, overlaid."""
        return self.root / self.HISTOGRAM

    def attack_grid(self, label: str, timestep: float) -> Path:
        """The attack grid of one model at one timestep (original | corrupted | tweedie | sample)."""
        return self.root / f"{self._attack_prefix(label)}{timestep:g}.png"

    def top_matches(self, label: str) -> Path:
        """The closest generations of one model beside their nearest training items."""
        return self.root / f"top_matches_{label}.png"

    def attack_grids(self, label: str) -> dict[float, Path]:
        """The attack grids of one model that exist, by timestep (read back from the names
        ``attack_grid`` writes)."""
        prefix = self._attack_prefix(label)
        grids = {}
        for path in self.root.glob(f"{prefix}*.png"):
            try:
                timestep = float(path.name[len(prefix) : -len(".png")])
            except ValueError:  # another model's grid whose label extends this one
                continue
            if math.isfinite(timestep):
                grids[timestep] = path
        return grids

    @staticmethod
    def _attack_prefix(label: str) -> str:
        return f"attack_{label}_t"
