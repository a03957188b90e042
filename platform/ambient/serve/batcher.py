"""Batching by sampling key: jobs share a model call only when they can, and a cheap call goes first.

Jobs wait in one queue per SamplingKey. One dispatcher task runs one model call at a time (the model has
one worker thread): it picks a key, waits up to ``wait_s`` for that key's batch to fill, takes queued jobs
of that key up to ``max_weight`` and runs them. So a call never mixes keys, and a request whose settings
nobody shares runs in a call of its own size instead of holding a whole padded batch.

Order: the key whose image is cheapest (``cost.image_cost``) runs next, so that costly requests do not
hold up cheap ones. A key whose oldest job has waited ``max_defer_s`` goes first (oldest first), but
never twice in a row: costly work still runs under a stream of cheap requests, and a cheap request waits
behind at most one passed-over call besides the one running, however many costly ones are queued.

A job whose caller has gone (client disconnected, request timed out: Serve or the route cancels the
awaiting task, which cancels its future) is dropped before its call starts; once started it runs to the
end, since a model call cannot be interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .cost import image_cost
from .model import Job, JobResult
from .sampler import SamplingKey

logger = logging.getLogger("ray.serve")

RunBatch = Callable[[list[Job]], Awaitable[list[JobResult]]]


@dataclass
class _Entry:
    job: Job
    future: asyncio.Future[JobResult]


class KeyedBatcher:
    def __init__(self, run: RunBatch, max_weight: int, wait_s: float, max_defer_s: float) -> None:
        self._run = run
        self.max_weight = max_weight
        self.wait_s = wait_s
        self.max_defer_s = max_defer_s
        self._queues: dict[SamplingKey, deque[_Entry]] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.call_started: float | None = None  # monotonic start of the running model call
        self.dropped = 0  # jobs whose callers left before their call started
        self._overdue_ran = False  # the last call was one that had waited max_defer_s

    async def submit(self, job: Job) -> JobResult:
        """The job's result; cancelling the caller drops the job if its call has not started."""
        future: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(job.key, deque()).append(_Entry(job, future))
        self._ensure_dispatcher()
        assert self._wake is not None
        self._wake.set()
        return await future  # a cancelled caller cancels the future too

    def queued(self) -> int:
        return sum(1 for q in self._queues.values() for e in q if not e.future.done())

    def running_s(self, now: float | None = None) -> float:
        """How long the current model call has run (0 when none runs)."""
        started = self.call_started
        return 0.0 if started is None else (now if now is not None else time.monotonic()) - started

    def _ensure_dispatcher(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._dispatch())

    async def _dispatch(self) -> None:
        assert self._wake is not None
        while True:
            self._prune()
            if not self._queues:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = time.monotonic()
            key, overdue = pick_key(self._heads(), now, self.max_defer_s, not self._overdue_ran)
            delay = self._fill_delay(key, now)
            if delay > 0:
                self._wake.clear()  # a new job may fill the batch or bring a cheaper key
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            batch = self._take(key)
            if batch:
                self._overdue_ran = overdue
                await self._run_batch(batch)

    def _prune(self) -> None:
        """Drop jobs whose callers have gone, and empty queues."""
        for key in list(self._queues):
            queue = self._queues[key]
            live = deque(e for e in queue if not e.future.done())
            self.dropped += len(queue) - len(live)
            if live:
                self._queues[key] = live
            else:
                del self._queues[key]

    def _heads(self) -> list[tuple[SamplingKey, float, float]]:
        """(key, per-image cost, enqueue time of its oldest job) for each queued key."""
        return [(key, image_cost(key), q[0].job.enqueued) for key, q in self._queues.items()]

    def _fill_delay(self, key: SamplingKey, now: float) -> float:
        """Seconds to wait for more jobs of this key; 0 when the batch is full or waited enough."""
        queue = self._queues[key]
        if sum(e.job.weight for e in queue) >= self.max_weight:
            return 0.0
        return max(0.0, queue[0].job.enqueued + self.wait_s - now)

    def _take(self, key: SamplingKey) -> list[_Entry]:
        queue = self._queues[key]
        batch: list[_Entry] = []
        weight = 0
        while queue and weight + queue[0].job.weight <= self.max_weight:
            entry = queue.popleft()
            if entry.future.done():  # cancelled between the prune and now
                self.dropped += 1
                continue
            batch.append(entry)
            weight += entry.job.weight
        if not queue:
            del self._queues[key]
        return batch

    async def _run_batch(self, batch: list[_Entry]) -> None:
        self.call_started = time.monotonic()
        try:
            results = await self._run([e.job for e in batch])
        except Exception as err:  # the run itself failed (not one call: run_jobs answers those)
            logger.exception("batch of %d jobs failed", len(batch))
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(err)
        else:
            for e, result in zip(batch, results, strict=True):
                if not e.future.done():  # its caller may have gone while it ran
                    e.future.set_result(result)
        finally:
            self.call_started = None


def pick_key(
    heads: list[tuple[SamplingKey, float, float]], now: float, max_defer_s: float, allow_overdue: bool = True
) -> tuple[SamplingKey, bool]:
    """The key to run next, and whether it runs for having waited ``max_defer_s``.

    ``heads`` holds (key, per-image cost, enqueue time of its oldest job). The oldest key that has
    waited ``max_defer_s`` when ``allow_overdue``, else the cheapest; ties go to the older.
    """
    cheapest = min(heads, key=lambda h: (h[1], h[2]))
    overdue = [h for h in heads if now - h[2] >= max_defer_s] if allow_overdue else []
    if overdue:
        oldest = min(overdue, key=lambda h: h[2])
        return oldest[0], oldest is not cheapest
    return cheapest[0], False
