"""Merge exactness.py runs of consistency settings rows into one table, JSON and plot.

Each input is the JSON of one ``exactness.py --settings-rows ...`` process, or of an
``exactness.py --cost-only`` process. Two step costs per consistency row: ``step_cost`` is the interleaved
timing (``step_cost_interleaved``: alternating blocks of plain and consistency steps, so both see the same
machine load), taken from the row itself or from a --cost-only input; ``step_cost_training`` is the
whole training run's CPU seconds per step over those of the early_stop row of the *same process* (noisy
on a shared machine, whose load changes between the two runs). Rows are keyed by (sigma_n, label); the
oracle, trained identically (same seed, one thread) in every process, must agree across inputs.

    python benchmarks/exactness_settings.py part_a.json part_b.json \\
        --json docs/results/exactness_settings.json --plot docs/results/exactness_settings.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties given their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation: the Pearson correlation of the ranks (nan with fewer than 3 points)."""
    if len(a) != len(b):
        raise ValueError("need equally long sequences")
    if len(a) < 3:
        return math.nan
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else math.nan


def merge(parts: Sequence[dict]) -> dict:
    """One row per (sigma_n, label) with SW2 ratios, step-cost ratio and validation loss."""
    rows: dict[tuple[float, str], dict] = {}
    floors: dict[str, float] = {}
    timed = {
        (c["sigma_n"], c["label"]): c["step_cost_interleaved"] for p in parts for c in p.get("cost_only", [])
    }
    for index, part in enumerate(parts):
        if "results" not in part:
            continue
        floors.update(part["floor"])
        results = part["results"]
        plain = {r["sigma_n"]: r["step_cpu_seconds"] for r in results if r["variant"] == "early_stop"}
        for r in results:
            row = dict(r, part=index)
            cpu = r.get("step_cpu_seconds")
            row["step_cost_training"] = (
                cpu / plain[r["sigma_n"]] if cpu is not None and r["sigma_n"] in plain else None
            )
            key = (r["sigma_n"], r["label"])
            interleaved = r.get("step_cost_interleaved") or timed.get(key)
            row["step_cost"] = (
                1.0 if r["variant"] == "early_stop" else interleaved
            )  # early_stop: the plain step
            if key in rows:
                if r["variant"] == "oracle" and not math.isclose(rows[key]["sw2"], r["sw2"], rel_tol=1e-6):
                    raise ValueError(f"oracle differs between inputs: {rows[key]['sw2']} vs {r['sw2']}")
                rows[key].setdefault("step_cost_training_other_parts", []).append(row["step_cost_training"])
                continue
            rows[key] = row
    table = []
    for sigma_n in sorted({k[0] for k in rows}):
        here = [r for (s, _), r in rows.items() if s == sigma_n]
        oracle = next(r["sw2"] for r in here if r["variant"] == "oracle")
        em = next((r["sw2"] for r in here if r["variant"] == "em_reference"), None)
        floor = floors[str(sigma_n)]
        for r in here:
            r["sw2_over_oracle"] = r["sw2"] / oracle
            r["sw2_over_floor"] = r["sw2"] / floor
            r["sw2_over_em_reference"] = r["sw2"] / em if em else None
        table += here
    summary = {}
    for sigma_n in sorted({r["sigma_n"] for r in table}):
        cons = [r for r in table if r["sigma_n"] == sigma_n and r["variant"] == "consistency"]
        trained = [r for r in table if r["sigma_n"] == sigma_n and r["validation_loss"] is not None]
        summary[str(sigma_n)] = {
            "consistency_rows": len(cons),
            "spearman_validation_loss_vs_sw2_consistency_rows": spearman(
                [r["validation_loss"] for r in cons], [r["sw2"] for r in cons]
            ),
            "spearman_validation_loss_vs_sw2_all_rows": spearman(
                [r["validation_loss"] for r in trained], [r["sw2"] for r in trained]
            ),
        }
    return {"floor": floors, "rows": table, "summary": summary}


def markdown(merged: dict) -> str:
    lines = []
    for sigma_n in sorted({r["sigma_n"] for r in merged["rows"]}):
        lines += [
            f"\nsigma_n = {sigma_n:g} (floor {merged['floor'][str(sigma_n)]:.4f})\n",
            "| row | SW2 | / oracle | / floor | / EM reference | step cost (x plain) | step cost, whole runs "
            "| validation loss | denoiser MSE below / above |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in merged["rows"] if r["sigma_n"] == sigma_n):
            cost = "-" if r["step_cost"] is None else f"{r['step_cost']:.2f}"
            whole = "-" if r["step_cost_training"] is None else f"{r['step_cost_training']:.2f}"
            em = "-" if r["sw2_over_em_reference"] is None else f"{r['sw2_over_em_reference']:.2f}"
            lines.append(
                f"| {r['label']} | {r['sw2']:.4f} | {r['sw2_over_oracle']:.2f} | {r['sw2_over_floor']:.2f} | "
                f"{em} | {cost} | {whole} | {r['validation_loss']:.5f} | "
                f"{r['denoiser_error_below']:.2e} / {r['denoiser_error_above']:.2e} |"
            )
        s = merged["summary"][str(sigma_n)]
        lines.append(
            f"\nSpearman(validation loss, SW2): consistency rows "
            f"{s['spearman_validation_loss_vs_sw2_consistency_rows']:.2f} (n = {s['consistency_rows']}), "
            f"all rows with a validation loss {s['spearman_validation_loss_vs_sw2_all_rows']:.2f}"
        )
    return "\n".join(lines)


def plot(path: Path, merged: dict) -> None:
    """Per sigma_n, top: SW2 (log scale) against step cost with the oracle, EM reference, early stop and
    the floor as lines; bottom: the consistency rows alone, zoomed and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmas = sorted({r["sigma_n"] for r in merged["rows"]})
    fig, axes = plt.subplots(2, len(sigmas), figsize=(6.5 * len(sigmas), 9), squeeze=False)
    styles = {"oracle": "tab:green", "em_reference": "tab:purple", "early_stop": "tab:red"}
    for col, sigma_n in enumerate(sigmas):
        here = [r for r in merged["rows"] if r["sigma_n"] == sigma_n]
        cons = [r for r in here if r["variant"] == "consistency" and r["step_cost"] is not None]
        xs, ys = [r["step_cost"] for r in cons], [r["sw2"] for r in cons]
        top, zoom = axes[0][col], axes[1][col]
        top.scatter(xs, ys, color="tab:blue", zorder=3, label="consistency settings")
        for r in here:
            if r["variant"] in styles:
                top.axhline(
                    r["sw2"], color=styles[r["variant"]], ls="--", lw=1, label=f"{r['label']} {r['sw2']:.4f}"
                )
        top.axhline(merged["floor"][str(sigma_n)], color="gray", ls=":", lw=1, label="clean-vs-clean floor")
        top.set_yscale("log")
        top.set_title(f"d = 2, sigma_n = {sigma_n:g}: SW2 to clean samples vs step cost")
        top.legend(fontsize=7, loc="upper right")
        zoom.scatter(xs, ys, color="tab:blue", zorder=3)
        for r in cons:
            name = r["label"].removeprefix("consistency[").removesuffix("]")
            zoom.annotate(
                name, (r["step_cost"], r["sw2"]), fontsize=8, xytext=(4, 3), textcoords="offset points"
            )
        zoom.set_title(f"sigma_n = {sigma_n:g}: consistency rows only (zoom)")
        for ax in (top, zoom):
            ax.set_xlabel("CPU time per training step / plain ambient step")
            ax.set_ylabel("SW2")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("parts", type=Path, nargs="+", help="JSON outputs of exactness.py")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args(argv)
    parts = [json.loads(path.read_text()) for path in args.parts]
    merged = merge(parts)
    merged["inputs"] = [
        {"file": path.name, "config": part.get("config")}
        for path, part in zip(args.parts, parts, strict=True)
    ]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(merged, indent=2) + "\n")
    print(markdown(merged))
    if args.plot is not None:
        plot(args.plot, merged)
    return merged


if __name__ == "__main__":
    main()
