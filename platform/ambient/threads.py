"""How many torch threads a CPU job uses when its config does not say, and the one way a computation
sets its own count for a while (a job or a worker sets its count once where it starts)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def default_threads() -> int:
    """Two threads on an idle machine; one on a busy one, where OpenMP threads spinning against other
    processes' made a step ten times slower than a single thread (measured on 2 cores at load 6)."""
    cpus = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] >= cpus else min(2, cpus)


@contextmanager
def torch_threads(count: int | None = None) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads (default_threads() when None); the process's
    count is restored after it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count or default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(previous)
