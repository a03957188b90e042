"""What a run leaves next to it: loss-curve PNG, sample grids, and the run summary."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from .records import StepRecord


def plot_loss_curve(history: list[StepRecord], path: Path, title: str) -> None:
    """Ambient, consistency and total loss against the optimizer step (log scale), and the held-out
    loss at the steps it was measured."""
    fig = Figure(figsize=(7, 4), dpi=100)  # no pyplot: no global backend or figure registry
    ax = fig.subplots()
    curves = {
        label: [(r.step, getattr(r, name)) for r in history if getattr(r, name) is not None]
        for name, label in (
            ("loss", "total"),
            ("ambient_loss", "ambient"),
            ("consistency_loss", "consistency"),
        )
    }
    # Records carry the last held-out loss between validations: one point per measurement.
    measured = {r.val_step: r.val_ambient_loss for r in history if r.val_step is not None}
    curves["validation ambient"] = sorted(measured.items())
    for label, pts in curves.items():
        if pts:
            ax.plot(*zip(*pts, strict=True), label=label, marker="." if len(pts) < 50 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if all(r.loss > 0 for r in history):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
