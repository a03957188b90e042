"""The scatter plot of the generated samples: one row per sigma_n, the truth first (d = 2)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ambient.core import GaussianMixture

from .config import Config
from .data import clean_samples, largest_std

if TYPE_CHECKING:
    from .run import Outcome


def plot(path: Path, gm: GaussianMixture, outcomes: Sequence[Outcome], cfg: Config) -> None:
    """One row per sigma_n: the truth, then the variants that ran (first two coordinates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = clean_samples(gm, cfg.eval_samples, cfg.seed + 3).numpy()
    per_sigma = max(sum(o.sigma_n == sn for o in outcomes) for sn in cfg.sigma_ns)
    nrows, ncols = len(cfg.sigma_ns), 1 + per_sigma  # truth, then the rows that ran
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3 * nrows), squeeze=False)
    lim = cfg.scale + 4 * largest_std(cfg) + 0.3
    for i, sigma_n in enumerate(cfg.sigma_ns):
        rows = [o for o in outcomes if o.sigma_n == sigma_n]
        panels = [("truth", truth, None)] + [(o.label, o.samples.numpy(), o.sw2) for o in rows]
        for ax in axes[i][len(panels) :]:
            ax.set_axis_off()
        for ax, (name, pts, sw2) in zip(axes[i], panels, strict=False):
            ax.scatter(pts[:, 0], pts[:, 1], s=0.5, alpha=0.3, color="black" if sw2 is None else "tab:blue")
            title = name if sw2 is None else f"{name}  SW2 {sw2:.3f}"
            ax.set_title(f"{title}\nsigma_n={sigma_n:g}", fontsize=9)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
