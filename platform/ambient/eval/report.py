"""The audit report: report.json (every number), report.md (side-by-side tables) and PNGs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from torch import Tensor

from ambient.config import redacted
from ambient.models.sampling import image_grid
from ambient.models.vae import tensor_to_pil

from .config import AuditConfig
from .items import AuditItems

REPORT_JSON, REPORT_MD, HISTOGRAM = "report.json", "report.md", "generation_similarity.png"
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


def _top_matches(audit, originals: Tensor, top_k: int, path: Path) -> list[tuple[int, int, float]]:
    gen = audit.generation
    order = gen.max_similarity.argsort(descending=True)[:top_k].tolist()
    tiles = []
    for i in order:
        tiles += tensor_to_pil(gen.images[i : i + 1]) + tensor_to_pil(
            originals[int(gen.nearest[i]) : int(gen.nearest[i]) + 1]
        )
    image_grid(tiles, len(order)).save(path)
    return [(i, int(gen.nearest[i]), float(gen.max_similarity[i])) for i in order]


def _histogram(audits: list, path: Path) -> None:
    fig = Figure(figsize=(6, 3.5))  # no pyplot: no global backend or figure registry
    ax = fig.subplots()
    bins = [i / 40 for i in range(-40, 41)]
    for audit in audits:
        ax.hist(audit.generation.max_similarity.numpy(), bins=bins, alpha=0.5, label=audit.label)
    for t in audits[0].generation.thresholds:
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
    top_matches: tuple[str, list[tuple[int, int, float]]] | None  # (file name, matches) with generation


def write_report(out_dir: Path, cfg: AuditConfig, items: AuditItems, originals: Tensor, audits: list) -> Path:
    """Write the report into ``out_dir`` (created); returns the path of report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = [_write_pictures(out_dir, cfg, originals, audit) for audit in audits]
    with_gen = [a for a in audits if a.generation is not None]
    if with_gen:
        _histogram(with_gen, out_dir / HISTOGRAM)
    data = report_data(cfg, items, audits)
    (out_dir / REPORT_JSON).write_text(json.dumps(data, indent=2, default=str) + "\n")
    path = out_dir / REPORT_MD
    path.write_text("\n".join(report_markdown(cfg, items, audits, pictures)) + "\n")
    return path


def _write_pictures(out_dir: Path, cfg: AuditConfig, originals: Tensor, audit) -> _Pictures:
    attacks = []
    for attack in audit.attacks:
        name = f"attack_{audit.label}_t{attack.timestep:g}.png"
        attacks.append((name, _attack_grid(originals, attack.images, out_dir / name)))
    top = None
    if audit.generation is not None:
        name = f"top_matches_{audit.label}.png"
        top = (name, _top_matches(audit, originals, cfg.generation.top_k, out_dir / name))
    return _Pictures(attacks=attacks, top_matches=top)


# ---- report.json: every number -------------------------------------------------------------------


def report_data(cfg: AuditConfig, items: AuditItems, audits: list) -> dict:
    return {
        "config": redacted(cfg),
        "features": cfg.features.kind,
        "items": [{"id": i, "caption": c} for i, c in zip(items.ids, items.captions, strict=True)],
        "models": [_model_data(audit, items) for audit in audits],
    }


def _model_data(audit, items: AuditItems) -> dict:
    entry = audit.summary()
    entry["per_item"] = [
        {
            "timestep": attack.timestep,
            "tweedie_similarity": attack.tweedie_similarity.tolist(),
            "tweedie_psnr": attack.tweedie_psnr.tolist(),
            "sample_similarity": None
            if attack.sample_similarity is None
            else attack.sample_similarity.tolist(),
            "sample_psnr": None if attack.sample_psnr is None else attack.sample_psnr.tolist(),
        }
        for attack in audit.attacks
    ]
    if audit.generation is not None:
        entry["generation_max_similarity"] = audit.generation.max_similarity.tolist()
        entry["generation_nearest"] = [items.ids[j] for j in audit.generation.nearest.tolist()]
    return entry


# ---- report.md: side-by-side tables and the pictures ----------------------------------------------


def report_markdown(
    cfg: AuditConfig, items: AuditItems, audits: list, pictures: list[_Pictures]
) -> list[str]:
    md = [
        "# Memorization audit",
        "",
        f"{len(items)} training items ({cfg.items.kind}), features: **{cfg.features.kind}**"
        + (" (pixel-level near-duplication, not semantics)" if cfg.features.kind == "builtin" else "")
        + f", seed {cfg.seed}. Memorization score: **{cfg.score}** (higher = more memorization). "
        "See docs/audit.md for what each number means.",
        "",
        "| | " + " | ".join(a.label for a in audits) + " |",
        "|---|" + "---|" * len(audits),
    ]
    md += [f"| {name} | " + " | ".join(values) + " |" for name, values in _table_rows(audits)]
    md.append("")
    if any(a.generation is not None for a in audits):
        md += ["## Generation similarity", "", f"![histogram]({HISTOGRAM})", ""]
    for audit, pics in zip(audits, pictures, strict=True):
        md += _model_section(audit, items, pics)
    return md


def _table_rows(audits: list) -> list[tuple[str, list[str]]]:
    """The side-by-side table: (row name, one cell per model)."""
    rows = [
        ("memorization score", [_fmt(a.score) for a in audits]),
        (
            "VAE round trip: similarity / PSNR",
            [
                f"{_fmt(a.vae_ceiling['similarity_mean'])} / {_fmt(a.vae_ceiling['psnr_mean'], 1)} dB"
                for a in audits
            ],
        ),
    ]
    rows += _attack_rows(audits)
    if audits and all(a.generation is not None for a in audits):
        rows += _generation_rows(audits)
    return rows


def _attack_rows(audits: list) -> list[tuple[str, list[str]]]:
    rows = []
    for k, attack in enumerate(audits[0].attacks):
        tag = f"t={attack.timestep:g} (sigma {attack.sigma:.2f}, mask {attack.mask})"
        summaries = [a.attacks[k].summary() for a in audits]
        kinds = [("Tweedie", "tweedie")]
        if attack.sample_similarity is not None:
            kinds.append(("sampler", "sample"))
        for label, key in kinds:
            rows.append(
                (
                    f"attack {tag}: {label} similarity mean / max",
                    [
                        f"{_fmt(s[f'{key}_similarity_mean'])} / {_fmt(s[f'{key}_similarity_max'])}"
                        for s in summaries
                    ],
                )
            )
            rows.append(
                (f"attack {tag}: {label} PSNR", [_fmt(s[f"{key}_psnr_mean"], 1) + " dB" for s in summaries])
            )
    return rows


def _generation_rows(audits: list) -> list[tuple[str, list[str]]]:
    summaries = [a.generation.summary() for a in audits]
    rows = [
        ("generations", [str(s["n"]) for s in summaries]),
        (
            "generation: mean / max of max-similarity",
            [f"{_fmt(s['mean_max_similarity'])} / {_fmt(s['max_similarity'])}" for s in summaries],
        ),
    ]
    for t in audits[0].generation.thresholds:
        rows.append(
            (f"generation: fraction above {t:g}", [_fmt(a.generation.fraction_above(t)) for a in audits])
        )
    if all(a.quality and "fd_builtin" in a.quality for a in audits):
        rows.append(
            (
                "fd_builtin (built-in Fréchet distance, NOT FID)",
                [_fmt(a.quality["fd_builtin"], 2) for a in audits],
            )
        )
        rows.append(("FID (Inception)", [_fmt(a.quality["fid"], 2) for a in audits]))
    if all(a.quality and "prompt_adherence" in a.quality for a in audits):
        rows.append(
            (
                "prompt adherence (colours and shape read from the pixels)",
                [_fmt(a.quality["prompt_adherence"]["adherence"]) for a in audits],
            )
        )
    return rows


def _model_section(audit, items: AuditItems, pictures: _Pictures) -> list[str]:
    md = [f"## {audit.label}", "", f"Model: `{audit.path}`", ""]
    for attack, (name, columns) in zip(audit.attacks, pictures.attacks, strict=True):
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
            f"| {r + 1} | {audit.generation.captions[i]} | {items.ids[j]} | {s:.3f} |"
            for r, (i, j, s) in enumerate(matches)
        ]
        md.append("")
    return md
