"""The sweep's outputs: results table (CSV + Markdown), the best config as YAML, a Pareto plot."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import yaml
from matplotlib.figure import Figure

from ambient.config import redacted
from ambient.storage import join

from .axes import AXES
from .config import SweepConfig
from .result import TrialResult
from .trial import trial_config

METRICS = ("status", *TrialResult.columns())

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
BEST_CONFIG = "best_config.yaml"
PARETO = "pareto.png"
GRIDS = "grids"


@dataclass(frozen=True)
class SweepLayout:
    """The sweep's own outputs in its folder (a local path or an s3:// URI), beside its trials' runs
    (each a ``RunLayout``: ``sweep.trial_layout``)."""

    root: str

    @property
    def results_csv(self) -> str:
        """Every trial's parameters and metrics, with its sample grid and summary.json."""
        return join(self.root, RESULTS_CSV)

    @property
    def results_md(self) -> str:
        """The results table the sweep job prints the path of."""
        return join(self.root, RESULTS_MD)

    @property
    def best_config(self) -> str:
        """The best trial's fine-tuning config, runnable as it is."""
        return join(self.root, BEST_CONFIG)

    @property
    def pareto(self) -> str:
        return join(self.root, PARETO)

    @property
    def grids(self) -> str:
        """Each trial's last sample grid, ``<trial>.png``."""
        return join(self.root, GRIDS)

    def grid(self, trial: str) -> str:
        return join(self.grids, f"{trial}.png")


def parameters(cfg: SweepConfig) -> list[str]:
    """The table's parameter columns: every named axis (a stable header), then the sweep's path axes."""
    return [*(a.name for a in AXES), *cfg.space.paths]


def columns(cfg: SweepConfig) -> list[str]:
    return ["trial", *parameters(cfg), *METRICS]


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _completed(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "completed" and _finite(r.get("val_ambient_loss"))]


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def best_row(rows: list[dict]) -> dict | None:
    done = _completed(rows)
    key = "objective" if all(_finite(r.get("objective")) for r in done) else "val_ambient_loss"
    return min(done, key=lambda r: r[key]) if done else None


def pareto_front(rows: list[dict]) -> list[dict]:
    """Trials no other trial beats on both axes: lower quality distance and less memorization (the audit's
    score; where a trial has none, a higher training noise level stands in for less memorization)."""
    done = [r for r in _completed(rows) if _finite(r.get("quality_sw"))]

    def mem(r: dict) -> float:
        return r["memorization"] if _finite(r.get("memorization")) else -(r.get("sigma_train") or 0.0)

    return [
        r
        for r in done
        if not any(
            o is not r
            and o["quality_sw"] <= r["quality_sw"]
            and mem(o) <= mem(r)
            and (o["quality_sw"] < r["quality_sw"] or mem(o) < mem(r))
            for o in done
        )
    ]


def plot_pareto(rows: list[dict], path: Path, params: list[str]) -> None:
    done = [r for r in _completed(rows) if _finite(r.get("quality_sw"))]
    front = pareto_front(rows)
    use_memorization = all(_finite(r.get("memorization")) for r in done) and done
    fig = Figure(figsize=(6.5, 4.5), dpi=100)  # no pyplot: no global backend or figure registry
    ax = fig.subplots()
    for r in done:
        x = r["memorization"] if use_memorization else (r.get("sigma_train") or 0.0)
        on_front = r in front
        ax.scatter(x, r["quality_sw"], s=60, c="tab:red" if on_front else "tab:blue", zorder=3)
        label = ", ".join(f"{k}={_fmt(r[k])}" for k in params if r.get(k) is not None)
        ax.annotate(label, (x, r["quality_sw"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(
        "memorization score"
        if use_memorization
        else "training noise level sigma_train (higher memorizes less)"
    )
    ax.set_ylabel("noisy-space sliced W2 to held-out data (lower is better)")
    ax.set_title("Sweep: quality against memorization (red: Pareto front)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def write_reports(rows: list[dict], sweep_dir: Path, cfg: SweepConfig, base_dump: dict, note: str) -> str:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    layout = SweepLayout(str(sweep_dir))
    params, cols = parameters(cfg), columns(cfg)
    rows = sorted(rows, key=lambda r: (r.get("objective") is None, r.get("objective") or 0.0))
    with open(layout.results_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*cols, "sample_grid", "summary"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    best = best_row(rows)
    lines = [
        f"# Sweep {cfg.name}",
        "",
        f"Objective: minimise `{cfg.metric}` + {cfg.memorization.weight} x `memorization` (the ambient loss on "
        "held-out noisy rows at their own sigma_n, x0 weighting capped at 100, fixed draws: comparable across "
        "training noise levels; ASHA stops trials on the loss alone).",
        f"Quality: `quality_sw`, the noisy-space sliced W2 of {cfg.quality_samples} samples (+ noise at the data's "
        "sigma_n) to the held-out noisy latents.",
        f"Memorization: {note}.",
        "",
        "| " + " | ".join(cols) + " |",
        "| " + " | ".join("---" for _ in cols) + " |",
    ]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    if best is not None:
        chosen = {k: best[k] for k in cfg.space.axes() if best.get(k) is not None}
        best_cfg = trial_config(base_dump, chosen, f"{cfg.name}-best", base_dump["run"]["storage_path"])
        data = redacted(best_cfg)
        data["storage"] = {
            k: v for k, v in data["storage"].items() if k not in ("access_key_id", "secret_access_key")
        }
        Path(layout.best_config).write_text(
            f"# Best trial {best['trial']} of sweep {cfg.name}: python jobs/finetune.py --config this-file\n"
            + yaml.safe_dump(data, sort_keys=False)
        )
        lines += ["", f"Best trial: `{best['trial']}` with {chosen}; its config: `{BEST_CONFIG}`."]
    else:
        lines += ["", "No trial completed: there is no best config."]
    plot_pareto(rows, Path(layout.pareto), params)
    lines += ["", f"Pareto plot: `{PARETO}`; each trial's last sample grid: `{GRIDS}/`."]
    Path(layout.results_md).write_text("\n".join(lines) + "\n")
    return layout.results_md
