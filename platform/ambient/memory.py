"""Peak CPU tensor memory of a call, measured in-process (to check that memory stays bounded).

The PyTorch profiler records every CPU allocation and free of the tensor allocator with its size;
their running sum in chronological order is the live tensor memory, and its maximum is the call's
peak above what was live before it. Run it with one intra-op thread for a number that repeats
exactly from run to run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from .threads import torch_threads

T = TypeVar("T")


def peak_cpu_bytes(fn: Callable[[], T]) -> tuple[T, int]:
    """(fn's result, the peak of CPU tensor bytes allocated during the call and not yet freed)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return result, peak


def single_threaded(fn: Callable[[], T]) -> T:
    """fn() with one torch intra-op thread (the thread count is restored)."""
    with torch_threads(1):
        return fn()
