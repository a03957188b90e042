"""How many torch threads a CPU job uses when its config does not say."""

from __future__ import annotations

import os


def default_threads() -> int:
    """Two threads on an idle machine; one on a busy one, where OpenMP threads spinning against other
    processes' made a step ten times slower than a single thread (measured on 2 cores at load 6)."""
    cpus = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] >= cpus else min(2, cpus)
