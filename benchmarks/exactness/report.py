"""Output: the per-sigma_n table on stdout and the JSON written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .run import Outcome


def step_cost_ratio(row: Outcome, rows: Sequence[Outcome]) -> float | None:
    """CPU seconds per training step relative to the plain ambient step (the early_stop row's training)."""
    plain = next((r for r in rows if r.variant == "early_stop" and r.sigma_n == row.sigma_n), None)
    if plain is None or plain.step_cpu_seconds is None or row.step_cpu_seconds is None:
        return None
    return row.step_cpu_seconds / plain.step_cpu_seconds


def print_table(sigma_n: float, floor: float, rows: Sequence[Outcome]) -> None:
    oracle = next(r.sw2 for r in rows if r.variant == "oracle")
    print(f"\nsigma_n = {sigma_n:g}   (clean-vs-clean SW2 floor {floor:.4f})")
    print(
        f"{'row':<28} {'sw2':>8} {'/oracle':>8} {'/floor':>8} {'err<sn':>9} {'err>sn':>9} "
        f"{'val loss':>9} {'cost':>6} {'seconds':>8}"
    )
    for r in rows:
        ratio = step_cost_ratio(r, rows)
        cost = "-" if ratio is None else f"{ratio:.2f}"
        val = "-" if r.validation_loss is None else f"{r.validation_loss:.5f}"
        print(
            f"{r.label:<28} {r.sw2:8.4f} {r.sw2 / oracle:8.2f} {r.sw2 / floor:8.2f} "
            f"{r.denoiser_error_below:9.2e} {r.denoiser_error_above:9.2e} {val:>9} {cost:>6} {r.seconds:8.1f}",
            flush=True,
        )


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
