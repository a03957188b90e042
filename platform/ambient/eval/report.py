"""The audit report: report.json (every number), report.md (side-by-side tables) and PNGs.

The audits (``ModelAudit``s of ambient.eval.api, which imports this module: hence untyped here) become
one ``AuditResult``; report.json is its dict, and report.md's tables read the same record, so the two
never disagree. Every file name comes from ``AuditLayout``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from torch import Tensor

from ambient.config import redacted
from ambient.models.sampling import image_grid
from ambient.models.vae import tensor_to_pil

from .config import AuditConfig
from .items import AuditItems
from .results import AttackSummary, AuditedItem, AuditLayout, AuditResult, ModelResult, Reconstruction

MAX_ROWS = 8  # items shown in the attack grids


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _attack_grid(originals: Tensor, images: dict[str, Tensor], path: Path) -> list[str]:
    columns = ["original"] + [k for k in ("corrupted", "tweedie", "sample") if k in images]
    rows = min(MAX_ROWS, len(originals))
    stacks = {"original": originals, **images}
    tiles = [im for i in range(rows) for name in columns for im in tensor_to_pil(stacks[name][i : i + 1])]
    image_grid(tiles, rows).save(path)
    return columns


def _top_matches(
    audit, items: AuditItems, originals: Tensor, top_k: int, path: Path
) -> list[tuple[str, str, float]]:
    """Draw the ``top_k`` closest generations beside their nearest items; (caption, item id, similarity)
    of each row."""
    gen = audit.generation
    order = gen.max_similarity.argsort(descending=True)[:top_k].tolist()
    tiles = []
    for i in order:
        tiles += tensor_to_pil(gen.images[i : i + 1]) + tensor_to_pil(
            originals[int(gen.nearest[i]) : int(gen.nearest[i]) + 1]
        )
    image_grid(tiles, len(order)).save(path)
    return [(gen.captions[i], items.ids[int(gen.nearest[i])], float(gen.max_similarity[i])) for i in order]


def _histogram(models: list[ModelResult], path: Path) -> None:
    fig = Figure(figsize=(6, 3.5))  # no pyplot: no global backend or figure registry
    ax = fig.subplots()
    bins = [i / 40 for i in range(-40, 41)]
    for model in models:
        ax.hist(model.generation_max_similarity, bins=bins, alpha=0.5, label=model.label)
    for t in models[0].generation.thresholds:
        ax.axvline(t, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("max similarity of a generation to any training item")
    ax.set_ylabel("generations")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


@dataclass(frozen=True)
class _Pictures:
    """The PNGs written for one audited model, with what its Markdown section says about them."""

    attacks: list[tuple[str, list[str]]]  # (file name, grid columns) per attack
    # (file name, (generation caption, nearest item id, similarity) per row) where generations ran
    top_matches: tuple[str, list[tuple[str, str, float]]] | None


def write_report(out_dir: Path, cfg: AuditConfig, items: AuditItems, originals: Tensor, audits: list) -> Path:
    """Write the report into ``out_dir`` (created); returns the path of report.md."""
    layout = AuditLayout(out_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    pictures = [_write_pictures(layout, cfg, items, originals, audit) for audit in audits]
    result = audit_result(cfg, items, audits)
    with_gen = [m for m in result.models if m.generation is not None]
    if with_gen:
        _histogram(with_gen, layout.histogram)
    layout.report_json.write_text(result.to_json())
    layout.report_md.write_text("\n".join(report_markdown(cfg, len(items), result, pictures)) + "\n")
    return layout.report_md


def _write_pictures(
    layout: AuditLayout, cfg: AuditConfig, items: AuditItems, originals: Tensor, audit
) -> _Pictures:
    attacks = []
    for attack in audit.attacks:
        path = layout.attack_grid(audit.label, attack.timestep)
        attacks.append((path.name, _attack_grid(originals, attack.images, path)))
    top = None
    if audit.generation is not None:
        path = layout.top_matches(audit.label)
        top = (path.name, _top_matches(audit, items, originals, cfg.generation.top_k, path))
    return _Pictures(attacks=attacks, top_matches=top)


# ---- report.json: every number -------------------------------------------------------------------


def audit_result(cfg: AuditConfig, items: AuditItems, audits: list) -> AuditResult:
    return AuditResult(
        config=redacted(cfg),
        features=cfg.features.kind,
        items=[AuditedItem(i, c) for i, c in zip(items.ids, items.captions, strict=True)],
        models=[model_result(audit, items) for audit in audits],
    )


def model_result(audit, items: AuditItems) -> ModelResult:
    """One ModelAudit's numbers (tensors become lists; generations' nearest items become ids)."""
    gen = audit.generation
    return ModelResult(
        label=audit.label,
        path=audit.path,
        memorization_score=audit.score,
        score=audit.score_name,
        vae_ceiling=audit.vae_ceiling,
        attacks=[attack.summary() for attack in audit.attacks],
        generation=None if gen is None else gen.summary(),
        generation_sampling=audit.generation_sampling,
        quality=audit.quality,
        prompt_adherence=audit.prompt_adherence,
        per_item=[attack.per_item() for attack in audit.attacks],
        generation_max_similarity=None if gen is None else gen.max_similarity.tolist(),
        generation_nearest=None if gen is None else [items.ids[j] for j in gen.nearest.tolist()],
    )


# ---- report.md: side-by-side tables and the pictures ----------------------------------------------


def report_markdown(
    cfg: AuditConfig, count: int, result: AuditResult, pictures: list[_Pictures]
) -> list[str]:
    """report.md's lines: the side-by-side table of ``result``, then each model's pictures."""
    models = result.models
    md = [
        "# Memorization audit",
        "",
        f"{count} training items ({cfg.items.kind}), features: **{cfg.features.kind}**"
        + (" (pixel-level near-duplication, not semantics)" if cfg.features.kind == "builtin" else "")
        + f", seed {cfg.seed}. Memorization score: **{cfg.score}** (higher = more memorization). "
        "See docs/audit.md for what each number means.",
        "",
        "| | " + " | ".join(m.label for m in models) + " |",
        "|---|" + "---|" * len(models),
    ]
    md += [f"| {name} | " + " | ".join(values) + " |" for name, values in _table_rows(models)]
    md.append("")
    if any(m.generation is not None for m in models):
        md += ["## Generation similarity", "", f"![histogram]({AuditLayout.HISTOGRAM})", ""]
    for model, pics in zip(models, pictures, strict=True):
        md += _model_section(model, pics)
    return md


def _table_rows(models: list[ModelResult]) -> list[tuple[str, list[str]]]:
    """The side-by-side table: (row name, one cell per model)."""
    rows = [
        ("memorization score", [_fmt(m.memorization_score) for m in models]),
        (
            "VAE round trip: similarity / PSNR",
            [
                f"{_fmt(m.vae_ceiling.similarity_mean)} / {_fmt(m.vae_ceiling.psnr_mean, 1)} dB"
                for m in models
            ],
        ),
    ]
    rows += _attack_rows(models)
    if models and all(m.generation is not None for m in models):
        rows += _generation_rows(models)
    return rows


# The reconstructions of an attack, as the table names them.
_RECONSTRUCTIONS: list[tuple[str, Callable[[AttackSummary], Reconstruction | None]]] = [
    ("Tweedie", lambda attack: attack.tweedie),
    ("sampler", lambda attack: attack.sample),
]


def _attack_rows(models: list[ModelResult]) -> list[tuple[str, list[str]]]:
    rows = []
    for k, attack in enumerate(models[0].attacks):
        tag = f"t={attack.timestep:g} (sigma {attack.sigma:.2f}, mask {attack.mask})"
        for label, pick in _RECONSTRUCTIONS:
            if pick(attack) is None:  # the sampler did not run
                continue
            recs = [pick(m.attacks[k]) for m in models]
            rows.append(
                (
                    f"attack {tag}: {label} similarity mean / max",
                    [f"{_fmt(r.similarity_mean)} / {_fmt(r.similarity_max)}" for r in recs],
                )
            )
            rows.append((f"attack {tag}: {label} PSNR", [_fmt(r.psnr_mean, 1) + " dB" for r in recs]))
    return rows


def _generation_rows(models: list[ModelResult]) -> list[tuple[str, list[str]]]:
    gens = [m.generation for m in models]
    rows = [
        ("generations", [str(g.n) for g in gens]),
        (
            "generation: mean / max of max-similarity",
            [f"{_fmt(g.mean_max_similarity)} / {_fmt(g.max_similarity)}" for g in gens],
        ),
    ]
    for t in gens[0].thresholds:
        rows.append((f"generation: fraction above {t:g}", [_fmt(g.above(t)) for g in gens]))
    if all(m.quality is not None for m in models):
        rows.append(
            (
                "fd_builtin (built-in Fréchet distance, NOT FID)",
                [_fmt(m.quality.fd_builtin, 2) for m in models],
            )
        )
        rows.append(("FID (Inception)", [_fmt(m.quality.fid, 2) for m in models]))
    if all(m.prompt_adherence is not None for m in models):
        rows.append(
            (
                "prompt adherence (colours and shape read from the pixels)",
                [_fmt(m.prompt_adherence.adherence) for m in models],
            )
        )
    return rows


def _model_section(model: ModelResult, pictures: _Pictures) -> list[str]:
    md = [f"## {model.label}", "", f"Model: `{model.path}`", ""]
    for attack, (name, columns) in zip(model.attacks, pictures.attacks, strict=True):
        md += [
            f"Attack at t={attack.timestep:g}, columns: {', '.join(columns)}",
            "",
            f"![attack]({name})",
            "",
        ]
    if pictures.top_matches is not None:
        name, matches = pictures.top_matches
        md += ["Top matches (generation | nearest training item):", "", f"![top matches]({name})", ""]
        md += ["| row | caption | nearest item | similarity |", "|---|---|---|---|"]
        md += [
            f"| {r + 1} | {caption} | {item_id} | {s:.3f} |"
            for r, (caption, item_id, s) in enumerate(matches)
        ]
        md.append("")
    return md
