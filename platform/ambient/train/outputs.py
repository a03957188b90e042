"""What a run leaves next to it: loss-curve PNG, sample grids, and the run summary."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curve(history: list[dict], path: Path, title: str) -> None:
    """Ambient, consistency and total loss against the optimizer step (log scale)."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = [h["step"] for h in history]
    for key, label in (
        ("loss", "total"),
        ("ambient", "ambient"),
        ("consistency", "consistency"),
        ("val_ambient", "validation ambient"),
    ):
        pts = [(s, h[key]) for s, h in zip(steps, history, strict=True) if h.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=label, marker="." if len(pts) < 50 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if all(h.get("loss", 1) > 0 for h in history):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
