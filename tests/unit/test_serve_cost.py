"""Serving cost with a ceiling, without Ray or a server: the cost rule, the keyed batcher, the
public-host rule of ``build_app``. The FastAPI app over real HTTP is tests/integration/test_serve_http.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from ambient.core.sampling_spec import SamplingSpec
from ambient.serve.batcher import KeyedBatcher, pick_key
from ambient.serve.config import ServeConfig
from ambient.serve.cost import cost_problem, image_cost, passes, request_cost
from ambient.serve.model import Job, JobResult
from ambient.serve.sampler import SamplingKey


def key(steps: int = 2, guidance: float = 1.0, side: int = 64, method: str = "euler") -> SamplingKey:
    spec = SamplingSpec("full", 0.0, steps, guidance, method)  # type: ignore[arg-type]
    return SamplingKey(spec, side, side)


def job(k: SamplingKey, images: int = 1, enqueued: float | None = None) -> Job:
    j = Job(k, ["p"] * images, [""] * images, list(range(images)), images)
    if enqueued is not None:
        j.enqueued = enqueued
    return j


# --- the cost rule ---------------------------------------------------------------------------------


def test_passes_follow_the_sampler_and_the_guidance():
    assert passes("euler", 1.0) == 1 and passes("posterior", 1.0) == 1
    assert passes("heun", 1.0) == 2 and passes("euler", 5.0) == 2 and passes("heun", 5.0) == 4
    assert passes("euler", 0.0) == 2  # scale 0 still runs both branches
    assert image_cost(key(steps=10, guidance=5.0, side=1000, method="heun")) == pytest.approx(40.0)
    assert request_cost(key(steps=10, side=1000), 3) == pytest.approx(30.0)


def test_the_default_limit_admits_default_requests_and_refuses_the_maximal_one():
    limits = ServeConfig().limits
    at = {s: key(steps=20, guidance=5.0, side=s, method="heun") for s in (512, 1024)}
    assert cost_problem(at[512], 4, limits.max_request_cost) is None  # the demo config's largest
    assert cost_problem(at[1024], 1, limits.max_request_cost) is None
    maximal = key(steps=50, guidance=5.0, side=1024, method="heun")  # valid under the other limits
    message = cost_problem(maximal, 4, limits.max_request_cost)
    assert message is not None and "limits.max_request_cost 100" in message
    assert "838.9 megapixel-steps" in message and "4 passes" in message


# --- the keyed batcher -----------------------------------------------------------------------------


def test_pick_key_cheapest_first_unless_something_waited_too_long():
    cheap, dear = key(steps=1), key(steps=50)
    heads = [(dear, image_cost(dear), 0.0), (cheap, image_cost(cheap), 5.0)]
    assert pick_key(heads, now=6.0, max_defer_s=10.0) == (cheap, False)
    assert pick_key(heads, now=10.0, max_defer_s=10.0) == (dear, True)  # waited 10 s: arrival order
    assert pick_key(heads, now=6.0, max_defer_s=0.0) == (dear, True)  # 0: arrival order
    # ... but not twice in a row: a cheap call runs between two passed-over ones.
    assert pick_key(heads, now=10.0, max_defer_s=10.0, allow_overdue=False) == (cheap, False)


@dataclass
class Recorder:
    """A stand-in model call that records each call's keys and images and can be held."""

    calls: list[list[Job]]
    gate: asyncio.Event

    async def __call__(self, jobs: list[Job]) -> list[JobResult]:
        self.calls.append(jobs)
        await self.gate.wait()
        return [JobResult(batch_images=sum(len(j.seeds) for j in jobs)) for j in jobs]


def test_batches_never_mix_keys_and_drop_cancelled_jobs_before_their_call():
    async def scenario() -> tuple[Recorder, KeyedBatcher, list]:
        rec = Recorder([], asyncio.Event())
        batcher = KeyedBatcher(rec, max_weight=4, wait_s=0.01, max_defer_s=10.0)
        first = asyncio.create_task(batcher.submit(job(key(guidance=3.0))))
        await asyncio.sleep(0.05)  # the first call runs (held): the rest queue behind it
        a = [asyncio.create_task(batcher.submit(job(key(guidance=2.0)))) for _ in range(3)]
        b = [asyncio.create_task(batcher.submit(job(key(guidance=2.1), images=2))) for _ in range(3)]
        gone = asyncio.create_task(batcher.submit(job(key(guidance=2.0))))
        await asyncio.sleep(0.01)
        gone.cancel()  # what Serve does to the handler when its client disconnects
        rec.gate.set()
        done = await asyncio.gather(first, *a, *b)
        return rec, batcher, done

    rec, batcher, done = asyncio.run(scenario())
    for call in rec.calls:
        assert len({j.key for j in call}) == 1  # one key per model call
        assert sum(j.weight for j in call) <= 4
    # 1 (first) + 1 (three of 2.0 together) + 2 (three 2-image jobs of 2.1 in calls of 4 images)
    assert [sum(len(j.seeds) for j in c) for c in rec.calls] == [1, 3, 4, 2]
    assert batcher.dropped == 1 and all(r.batch_images > 0 for r in done)


def test_cheap_work_overtakes_queued_costly_work():
    async def scenario() -> list[int]:
        rec = Recorder([], asyncio.Event())
        batcher = KeyedBatcher(rec, max_weight=4, wait_s=0.0, max_defer_s=10.0)
        hold = asyncio.create_task(batcher.submit(job(key(steps=3))))
        await asyncio.sleep(0.02)
        tasks = [asyncio.create_task(batcher.submit(job(key(steps=50), images=4))) for _ in range(2)]
        await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(batcher.submit(job(key(steps=1)))))
        await asyncio.sleep(0.01)
        rec.gate.set()
        await asyncio.gather(hold, *tasks)
        return [c[0].key.spec.steps for c in rec.calls]

    assert asyncio.run(scenario()) == [3, 1, 50, 50]


def test_passed_over_work_runs_but_never_twice_in_a_row():
    async def scenario() -> list[int]:
        rec = Recorder([], asyncio.Event())
        batcher = KeyedBatcher(rec, max_weight=4, wait_s=0.0, max_defer_s=0.05)
        hold = asyncio.create_task(batcher.submit(job(key(steps=3))))
        await asyncio.sleep(0.02)
        tasks = [asyncio.create_task(batcher.submit(job(key(steps=50), images=4))) for _ in range(2)]
        tasks += [asyncio.create_task(batcher.submit(job(key(steps=1), images=4))) for _ in range(2)]
        await asyncio.sleep(0.1)  # all four have now waited past max_defer_s
        rec.gate.set()
        await asyncio.gather(hold, *tasks)
        return [c[0].key.spec.steps for c in rec.calls]

    assert asyncio.run(scenario()) == [3, 50, 1, 50, 1]


# --- the public-host rule on the serve run / RayService path ---------------------------------------


def test_build_app_refuses_a_public_serve_host_without_a_token(monkeypatch):
    from ambient.models.source import resolve_model
    from ambient.serve import app
    from ambient.serve.app import build_app, serve_http_host

    tiny = {"model": str(resolve_model(None))}  # the tiny default, whatever the repo's demo export holds
    # The rule for the host `serve run` would bind (the suite's own Serve, if one runs, is not asked).
    monkeypatch.setattr(app, "running_serve_http_host", lambda: None)
    monkeypatch.setenv("RAY_SERVE_DEFAULT_HTTP_HOST", "0.0.0.0")
    assert serve_http_host() == "0.0.0.0"
    with pytest.raises(ValueError, match=r"Serve's HTTP host \(http_options.host\) 0.0.0.0 is not loopback "):
        build_app({})
    with pytest.raises(ValueError, match=r"auth.token_env is unset"):
        build_app({"http": {"host": "127.0.0.1"}})  # http.host does not decide what Serve binds
    monkeypatch.setenv("RAY_SERVE_DEFAULT_HTTP_HOST", "127.0.0.1")
    assert build_app(tiny) is not None
    monkeypatch.setenv("RAY_SERVE_DEFAULT_HTTP_HOST", "0.0.0.0")
    monkeypatch.setenv("AMBIENT_TEST_COST_TOKEN", "t")
    assert build_app({**tiny, "auth": {"token_env": "AMBIENT_TEST_COST_TOKEN"}}) is not None
    assert build_app({**tiny, "http": {"allow_public_without_token": True}}) is not None
