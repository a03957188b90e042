"""The FastAPI app of serve/http.py over real HTTP (uvicorn in a thread) on the tiny model, without Ray:
the token on the docs, the cost limit's 422, batching only calls that can share, and a hung model call.

The tests run ``SamplerService`` (the deployment's body without Serve's wrapping) in-process; a hung
model call is the model's worker thread held busy by the test, which is what a hang looks like from the
event loop. The cost rule and the batcher alone are in tests/unit/test_serve_cost.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from ambient.config import load_config
from ambient.serve.config import ServeConfig
from tests.helpers.services import free_port, wait_until

pytestmark = pytest.mark.integration

TOKEN_ENV, TOKEN = "AMBIENT_TEST_COST_HTTP_TOKEN", "cost-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Live:
    url: str
    service: object  # SamplerService


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    import os

    import uvicorn

    from ambient.models.source import resolve_model
    from ambient.serve.http import create_app
    from ambient.serve.model import ModelChoice
    from ambient.serve.service import SamplerService

    os.environ[TOKEN_ENV] = TOKEN
    cfg = load_config(
        ServeConfig,
        overrides=[
            f"auth.token_env={TOKEN_ENV}",
            "limits.max_request_cost=0.1",  # 64 px, 2 heun steps guided: 0.033 per image
            "limits.request_timeout_s=2",
            "limits.model_call_timeout_s=1",
            "defaults.steps=2",
            "defaults.method=heun",
            "batching.batch_wait_timeout_s=0.2",
            "replica.torch_threads=1",
        ],
    )
    service = SamplerService(cfg, ModelChoice("tiny default", str(resolve_model(None))))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/v1/health", timeout=5).status_code == 200, 60, "app up")
        yield Live(url, service)
    finally:
        server.should_exit = True
        thread.join(30)
        os.environ.pop(TOKEN_ENV, None)


def post(url: str, **body) -> requests.Response:
    return requests.post(
        f"{url}/v1/generate", json={"prompt": "a red circle", **body}, headers=AUTH, timeout=60
    )


class HeldModelThread:
    """Holds the model's single worker thread busy, as a hung model call would."""

    def __init__(self, service) -> None:
        self._release = threading.Event()
        self._service = service

    def __enter__(self) -> HeldModelThread:
        self._service._executor.submit(self._release.wait, 60)
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()


def test_docs_and_openapi_need_the_token(live):
    for path in ("/docs", "/openapi.json"):
        r = requests.get(f"{live.url}{path}", timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
        assert requests.get(f"{live.url}{path}", headers=AUTH, timeout=10).status_code == 200
    assert requests.get(f"{live.url}/v1/health", timeout=10).status_code == 200  # probes stay open


def test_a_request_over_the_cost_limit_gets_422_naming_the_limit_and_its_cost(live):
    r = post(live.url, num_images=4, seed=1)  # 4 x 64 x 64 x 2 steps x 4 passes = 0.131
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "over_cost_limit"
    assert "request cost 0.1311 megapixel-steps exceeds limits.max_request_cost 0.1" in error["message"]
    assert post(live.url, num_images=2, seed=1).status_code == 200  # 0.066 fits
    assert post(live.url, num_images=4, seed=1, guidance_scale=1.0).status_code == 200  # 2 passes: 0.066


def test_calls_that_cannot_share_are_not_batched_together(live):
    batcher = live.service.batcher
    with ThreadPoolExecutor(6) as pool:
        with HeldModelThread(live.service):  # everything queues, then runs as the batcher groups it
            busy = pool.submit(post, live.url, seed=9, steps=1)
            wait_until(lambda: batcher.call_started is not None, 10, "the first call to start")
            futures = [
                pool.submit(post, live.url, seed=i, guidance_scale=2.0 if i < 3 else 2.5) for i in range(5)
            ]
            wait_until(lambda: batcher.queued() == 5, 10, "five requests queued")
        responses = [f.result() for f in futures]
    assert busy.result().status_code == 200
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    # Two calls, one per guidance scale: three images and two, neither padded with the other's.
    assert [r.json()["batch_images"] for r in responses] == [3, 3, 3, 2, 2]


def test_a_hung_model_call_fails_the_health_check_and_queued_requests_time_out_and_are_dropped(live):
    service = live.service
    dropped = service.batcher.dropped
    with ThreadPoolExecutor(2) as pool, HeldModelThread(service):
        first = pool.submit(post, live.url, seed=1)  # its call starts, and waits for the held thread
        wait_until(lambda: service.batcher.call_started is not None, 10, "the first call to start")
        second = pool.submit(post, live.url, seed=2, steps=1)  # another key: queued behind it
        wait_until(lambda: service.batcher.queued() == 1, 10, "the second request queued")
        wait_until(lambda: service.health_problem() is not None, 10, "the call past its timeout")
        health = requests.get(f"{live.url}/v1/health", timeout=10)
        assert health.status_code == 503 and health.json() == {"status": "stalled"}
        with pytest.raises(RuntimeError, match="a model call has run .* over its timeout of 1s"):
            service.check_health()
        for r in (first.result(), second.result()):
            assert r.status_code == 504, r.text
            assert "limits.request_timeout_s (2s)" in r.json()["error"]["message"]
    # The second one's call never started: it leaves the queue, without a model call, once the held
    # call ends and the batcher looks at its queue again.
    wait_until(lambda: service.batcher.dropped == dropped + 1, 30, "the timed-out job dropped")
    assert service.batcher.queued() == 0
    assert service.health_problem() is None
    assert requests.get(f"{live.url}/v1/health", timeout=10).json() == {"status": "ok"}
    assert post(live.url, seed=3).status_code == 200  # and it keeps serving
