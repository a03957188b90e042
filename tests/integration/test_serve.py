"""The sampler service over real HTTP: Ray Serve on the session's local Ray cluster, the tiny model.

One deployment for the module (bearer token on, tiny limits so that everything runs in seconds); the
S3 test deploys a second app beside it (its own name and route prefix) and deletes it. Serve is shut
down at the end. The replica-kill test runs last.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.helpers.services import free_port, ray_metrics_port, wait_until

pytestmark = pytest.mark.integration

TOKEN_ENV = "AMBIENT_TEST_SERVE_TOKEN"
TOKEN = "test-token-not-a-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMALL = {"steps": 2, "height": 64, "width": 64}  # keep every call cheap


@pytest.fixture(scope="module")
def service(ray_session, tiny_model):
    from ray import serve

    from ambient.serve.app import build_application, load_serve_config

    port = free_port()
    os.environ[TOKEN_ENV] = TOKEN
    cfg = load_serve_config(
        inline={
            "model": tiny_model,
            "http": {"port": port},
            "auth": {"token_env": TOKEN_ENV},
            "limits": {
                "max_images_per_request": 4,
                "max_pixels": 128 * 128,
                "max_steps": 8,
                "max_prompt_chars": 200,
                "max_body_bytes": 4096,
                "max_request_cost": 0.5,  # megapixel-steps: 4 images at 128 px and 8 steps cost 1.05
            },
            "defaults": {"steps": 2, "method": "euler"},
            "batching": {"max_batch_images": 8, "batch_wait_timeout_s": 0.05},
            "replica": {"num_cpus": 1, "torch_threads": 1},
        }
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    try:
        serve.run(build_application(cfg), name="ambient-test", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: requests.get(f"{url}/v1/health", timeout=5).status_code == 200, 300, "service healthy"
        )
        yield url
    finally:
        serve.shutdown()
        os.environ.pop(TOKEN_ENV, None)


def generate(url: str, session=requests, **body) -> requests.Response:
    return session.post(
        f"{url}/v1/generate", json={"prompt": "a red circle", **SMALL, **body}, headers=AUTH, timeout=120
    )


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_health_is_public_and_model_reports_the_loaded_model(service):
    assert requests.get(f"{service}/v1/health", timeout=10).json() == {"status": "ok"}
    info = requests.get(f"{service}/v1/model", headers=AUTH, timeout=10).json()
    assert info["sigma_n"] == 0 and info["default_sampling_mode"] == "full"
    assert info["resolution"] == 64 and info["replica"]["pid"] > 0
    # The API's description follows the API's auth.
    for path in ("/docs", "/openapi.json"):
        refused = requests.get(f"{service}{path}", timeout=10)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized", path
    assert requests.get(f"{service}/docs", headers=AUTH, timeout=10).status_code == 200
    spec = requests.get(f"{service}/openapi.json", headers=AUTH, timeout=10).json()
    assert "/v1/generate" in spec["paths"]


def test_generate_returns_pngs_of_the_requested_size(service):
    r = generate(service, num_images=2, height=48, width=64, seed=7)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [im["seed"] for im in body["images"]] == [7, 8]
    for im in body["images"]:
        assert pixels(im["png_base64"]).shape == (48, 64, 3)
    assert not np.array_equal(
        pixels(body["images"][0]["png_base64"]), pixels(body["images"][1]["png_base64"])
    )
    assert r.headers["x-request-id"] == body["request_id"]

    png = generate(service, output="png", seed=7, height=48, width=64)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB")),
        pixels(body["images"][0]["png_base64"]),
    )


def test_same_seed_same_images_alone_and_under_concurrent_load(service):
    fast = {"guidance_scale": 1.0}  # one UNet branch: half the work, batching and seeds unchanged
    alone = generate(service, seed=1234, num_images=2, prompt="a blue square", **fast)
    assert alone.status_code == 200, alone.text
    expected = [pixels(im["png_base64"]) for im in alone.json()["images"]]

    def call(i: int) -> requests.Response:
        if i % 4 == 0:  # the seeded request, among others with other prompts and seeds
            return generate(service, seed=1234, num_images=2, prompt="a blue square", **fast)
        return generate(service, seed=i, num_images=1 + i % 3, prompt=f"shape {i}", **fast)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(call, range(24)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    seeded = [r.json() for i, r in enumerate(responses) if i % 4 == 0]
    # The load must actually have shared model calls, or this test proves nothing about batching.
    assert max(r.json()["batch_images"] for r in responses) > 2
    for body in seeded:
        got = [pixels(im["png_base64"]) for im in body["images"]]
        assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


LONG = "x" * 201
BAD_INPUTS = [
    # (case, request kwargs, status, a phrase the message must contain)
    ("malformed JSON", {"data": b'{"prompt": "a", ', "json_ct": True}, 422, "not valid JSON"),
    ("JSON array", {"json": ["a"]}, 422, "must be a JSON object"),
    ("missing prompt", {"json": {"steps": 2}}, 422, "prompt: field required"),
    ("empty prompt", {"json": {"prompt": ""}}, 422, "prompt"),
    ("prompt of wrong type", {"json": {"prompt": 5}}, 422, "prompt: Input should be a valid string"),
    (
        "steps as string",
        {"json": {"prompt": "a", "steps": "2"}},
        422,
        "steps: Input should be a valid integer",
    ),
    (
        "steps above the limit",
        {"json": {"prompt": "a", "steps": 9}},
        422,
        "steps: Input should be less than or equal to 8",
    ),
    (
        "zero steps",
        {"json": {"prompt": "a", "steps": 0}},
        422,
        "steps: Input should be greater than or equal to 1",
    ),
    (
        "too many images",
        {"json": {"prompt": "a", "num_images": 5}},
        422,
        "num_images: Input should be less than or equal to 4",
    ),
    (
        "too many pixels",
        {"json": {"prompt": "a", "height": 256, "width": 256}},
        422,
        "exceeds the limit of 16384",
    ),
    (
        "size not a VAE multiple",
        {"json": {"prompt": "a", "height": 62, "width": 64}},
        422,
        "height: must be a multiple of",
    ),
    (
        "negative width",
        {"json": {"prompt": "a", "width": -64}},
        422,
        "width: Input should be greater than or equal to 8",
    ),
    ("huge prompt", {"json": {"prompt": LONG}}, 422, "prompt: String should have at most 200 characters"),
    (
        "unknown field",
        {"json": {"prompt": "a", "num_inference_steps": 2}},
        422,
        "num_inference_steps: unknown field",
    ),
    ("unknown sampling mode", {"json": {"prompt": "a", "sampling_mode": "fast"}}, 422, "sampling_mode"),
    (
        "png with several images",
        {"json": {"prompt": "a", "output": "png", "num_images": 2}},
        422,
        "num_images must be 1",
    ),
    (
        "negative seed",
        {"json": {"prompt": "a", "seed": -1}},
        422,
        "seed: Input should be greater than or equal to 0",
    ),
    (
        "wrong content type",
        {"data": b"prompt=a", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        415,
        "Content-Type must be application/json",
    ),
    (
        "body too large",
        {"data": b'{"prompt": "' + b"a" * 5000 + b'"}', "json_ct": True},
        413,
        "exceeds 4096 bytes",
    ),
    (
        "cost over the limit",
        {"json": {"prompt": "a", "num_images": 4, "steps": 8, "height": 128, "width": 128}},
        422,
        "request cost 1.049 megapixel-steps exceeds limits.max_request_cost 0.5",
    ),
    ("missing token", {"json": {"prompt": "a"}, "auth": None}, 401, "missing bearer token"),
    ("wrong token", {"json": {"prompt": "a"}, "auth": "Bearer nope"}, 401, "invalid bearer token"),
    (
        "wrong auth scheme",
        {"json": {"prompt": "a"}, "auth": f"Basic {TOKEN}"},
        401,
        "must be 'Bearer <token>'",
    ),
    ("wrong method", {"method": "GET", "json": None}, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("case,kwargs,status,phrase", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_4xx_naming_the_problem(service, case, kwargs, status, phrase):
    kwargs = dict(kwargs)
    headers = dict(kwargs.pop("headers", {}))
    auth = kwargs.pop("auth", AUTH["Authorization"])
    if auth is not None:
        headers["Authorization"] = auth
    if kwargs.pop("json_ct", False):
        headers["Content-Type"] = "application/json"
    method = kwargs.pop("method", "POST")
    r = requests.request(method, f"{service}/v1/generate", headers=headers, timeout=60, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert phrase in error["message"], error
    assert error["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text and "/work" not in r.text and "site-packages" not in r.text
    if status == 401:
        assert TOKEN not in r.text and r.headers.get("www-authenticate") == "Bearer"
    # ... and the service keeps serving.
    assert requests.get(f"{service}/v1/model", headers=AUTH, timeout=30).status_code == 200


def _post_raw(url: str, head: dict[str, str], body: bytes) -> tuple[http.client.HTTPResponse, socket.socket]:
    """POST /v1/generate with exactly these extra headers and body bytes on a fresh connection.

    Returns the first response (status and headers read) and the socket, for what follows on it.
    """
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    lines = [
        "POST /v1/generate HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Authorization: Bearer {TOKEN}",
        *(f"{k}: {v}" for k, v in head.items()),
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response, sock


def _chunks(data: bytes, size: int) -> bytes:
    """``data`` in HTTP/1.1 chunked framing (without the terminating zero-length chunk)."""
    parts = (data[i : i + size] for i in range(0, len(data), size))
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)


CHUNKED = {"Transfer-Encoding": "chunked"}  # and no Content-Length


def test_chunked_body_over_the_cap_gets_413(service):
    body = json.dumps({"prompt": "a" * 60_000}).encode()  # 15x the 4096-byte cap
    response, sock = _post_raw(service, CHUNKED, _chunks(body, 1024) + b"0\r\n\r\n")
    with sock:
        error = json.loads(response.read())["error"]
    assert response.status == 413, error
    assert error["code"] == "body_too_large" and error["message"] == "the request body exceeds 4096 bytes"


def test_endless_chunked_body_is_refused_once_past_the_cap_and_the_connection_closed(service):
    # The body never ends: a service that waited for its end would time out here instead of answering.
    start = time.monotonic()
    response, sock = _post_raw(service, CHUNKED, _chunks(b'{"prompt": "' + b"a" * 8000, 1000))
    with sock:
        error = json.loads(response.read())["error"]
        assert response.status == 413 and error["code"] == "body_too_large", error
        assert time.monotonic() - start < 30
        assert response.getheader("connection") == "close"
        assert sock.recv(1) == b""  # the proxy closed the connection: the rest is never read


def test_a_chunked_body_under_the_cap_is_served(service):
    body = json.dumps({"prompt": "a red circle", **SMALL, "seed": 3}).encode()
    response, sock = _post_raw(service, CHUNKED, _chunks(body, 7) + b"0\r\n\r\n")
    with sock:
        out = json.loads(response.read())
    assert response.status == 200, out
    assert [im["seed"] for im in out["images"]] == [3]


def test_content_length_shorter_than_the_body_reads_only_the_declared_bytes(service):
    body = json.dumps({"prompt": "a" * 8000}).encode()
    response, sock = _post_raw(service, {"Content-Length": "12"}, body[:12])
    with sock:
        error = json.loads(response.read())["error"]
        # The app got the 12 declared bytes ('{"prompt": "'), not the body the client meant.
        assert response.status == 422 and error["message"] == "body: the request body is not valid JSON"
        # The rest is the next request on the connection to Serve's proxy: malformed, refused, closed.
        sock.sendall(body[12:])
        rest = http.client.HTTPResponse(sock)
        rest.begin()
        assert rest.status == 400 and rest.getheader("connection") == "close"


def test_unknown_route_and_model_route_need_the_token(service):
    assert requests.get(f"{service}/v1/model", timeout=10).status_code == 401
    r = requests.get(f"{service}/v1/nope", headers=AUTH, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_200_requests_at_concurrency_16_have_no_5xx(service):
    start = time.monotonic()
    sessions = [requests.Session() for _ in range(16)]

    def call(i: int) -> int:
        # guidance 1 skips the unconditional branch: half the UNet work, same serving path
        r = generate(service, session=sessions[i % 16], seed=i, prompt=f"load {i % 7}", guidance_scale=1.0)
        return r.status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(call, range(200)))
    elapsed = time.monotonic() - start
    assert codes.count(200) == 200, {c: codes.count(c) for c in set(codes)}
    print(f"200 requests at concurrency 16 in {elapsed:.1f}s ({200 / elapsed:.1f} req/s)")


def _scrape() -> str:
    return requests.get(f"http://127.0.0.1:{ray_metrics_port()}/metrics", timeout=10).text


def test_metrics_endpoint_shows_the_service_metrics_after_traffic(service):
    from ambient.metric_names import SERVE_METRICS

    assert generate(service, seed=1).status_code == 200
    wanted = {m.exported + ("_bucket" if m.kind == "histogram" else "") for m in SERVE_METRICS}
    wanted |= {
        'ray_ambient_serve_requests_total{.*route="/v1/generate".*status="200"',
        'ray_ambient_serve_requests_total{.*status="422"',
        "ray_serve_num_http_requests_total",  # Serve's own request metrics
    }
    # Ray's metrics agent exports every few seconds: poll until the names and the count have arrived.
    deadline = time.monotonic() + 60
    missing, images = wanted, 0.0
    while time.monotonic() < deadline:
        text = _scrape()
        missing = {w for w in wanted if not re.search(re.escape(w).replace(r"\.\*", ".*"), text)}
        images = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("ray_ambient_serve_images_total")
        )
        if not missing and images >= 200:
            break
        time.sleep(2)
    assert not missing, f"not exported within 60s: {sorted(missing)}"
    assert images >= 200, f"ray_ambient_serve_images_total is {images} after 60s, expected >= 200"


def test_model_from_s3_is_served_with_the_drivers_credentials(
    service, seaweedfs, tiny_model, tmp_path, monkeypatch
):
    """An exported folder on S3: the replica downloads it with the credentials resolved on the driver
    (its own environment has no AWS_* variables), reads its metadata, and never logs the secret."""
    import ray._private.worker as ray_worker
    from ray import serve

    from ambient.models import export_pipeline, load_components
    from ambient.models.source import cached_model_dir
    from ambient.serve.app import build_application, load_serve_config
    from ambient.storage import upload_directory

    export = export_pipeline(
        Path(tiny_model),
        load_components(tiny_model).unet,
        tmp_path / "export",
        {"sigma_n": 0.5, "trained_with_consistency": False, "resolution": 64, "steps": 7},
    )
    uri = f"s3://{seaweedfs.bucket}/models/{uuid.uuid4().hex[:12]}"  # fresh: nothing cached for it
    upload_directory(export, uri, seaweedfs.storage())
    for name, value in seaweedfs.env().items():  # the driver's environment, as `jobs/serve.py` reads it
        monkeypatch.setenv(name, value)
    cfg = load_serve_config(
        inline={
            "model": uri,
            "defaults": {"steps": 2, "method": "euler"},
            "replica": {"num_cpus": 1, "torch_threads": 1},
        }
    )
    app, prefix = "ambient-s3-test", "/s3"
    url = f"{service}{prefix}"
    try:
        serve.run(build_application(cfg), name=app, route_prefix=prefix, blocking=False)
        wait_until(lambda: requests.get(f"{url}/v1/health", timeout=5).status_code == 200, 300, "s3 model")
        info = requests.get(f"{url}/v1/model", timeout=10).json()
        assert info["source"] == uri
        assert (info["sigma_n"], info["default_sampling_mode"]) == (0.5, "early_stop")
        assert info["has_metadata"] and info["training_steps"] == 7
        r = requests.post(
            f"{url}/v1/generate", json={"prompt": "a red circle", "seed": 9, "output": "png"}, timeout=120
        )
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        assert r.content.startswith(b"\x89PNG\r\n\x1a\n") and r.headers["x-seed"] == "9"
        assert Image.open(io.BytesIO(r.content)).size == (64, 64)
        # The other app on this Serve instance is untouched.
        assert requests.get(f"{service}/v1/model", headers=AUTH, timeout=10).json()["source"] == tiny_model
        # The replica downloaded it into this node's cache.
        assert (cached_model_dir(uri, seaweedfs.storage()) / "unet").is_dir()
        logs = [
            p
            for p in (Path(ray_worker._global_node.get_session_dir_path()) / "logs").rglob("*")
            if p.is_file()
        ]
        texts = {p: p.read_bytes() for p in logs}
        assert any(f"serving {uri}".encode() in text for text in texts.values())  # the replica's own log
        leaked = [p.name for p, text in texts.items() if seaweedfs.secret_access_key.encode() in text]
        assert not leaked, f"the S3 secret is in {leaked}"
    finally:
        serve.delete(app)
        shutil.rmtree(cached_model_dir(uri, seaweedfs.storage()), ignore_errors=True)


def test_a_model_call_past_its_timeout_fails_the_health_check(service, tiny_model):
    """A second app whose model calls time out after 1 s: one 8 s call (4 images at 128 px, 8 heun
    steps, guided) makes /v1/health answer 'stalled' while it runs (and Serve's check_health fail, which
    may replace the replica); afterwards the app is healthy again."""
    from ray import serve

    from ambient.serve.app import build_application, load_serve_config

    cfg = load_serve_config(
        inline={
            "model": tiny_model,
            "limits": {"max_pixels": 128 * 128, "max_steps": 8, "model_call_timeout_s": 1},
            "defaults": {"steps": 2, "method": "heun"},
            "replica": {"num_cpus": 1, "torch_threads": 1},
        }
    )
    app, url = "ambient-stall-test", f"{service}/stall"
    try:
        serve.run(build_application(cfg), name=app, route_prefix="/stall", blocking=False)
        wait_until(lambda: requests.get(f"{url}/v1/health", timeout=5).status_code == 200, 300, "stall app")
        body = {"prompt": "a", "num_images": 4, "steps": 8, "height": 128, "width": 128, "seed": 1}
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(requests.post, f"{url}/v1/generate", json=body, timeout=300)
            seen = set()
            deadline = time.monotonic() + 60
            while not pending.done() and time.monotonic() < deadline and "stalled" not in seen:
                health = requests.get(f"{url}/v1/health", timeout=10)
                seen.add(
                    health.json().get("status") if health.status_code in (200, 503) else health.status_code
                )
                time.sleep(0.2)
            assert "stalled" in seen, seen
            assert pending.result().status_code in (200, 500, 502, 503)  # 5xx if Serve replaced it
        wait_until(
            lambda: requests.get(f"{url}/v1/health", timeout=5).status_code == 200, 180, "healthy again"
        )
    finally:
        serve.delete(app)


def test_killed_replica_is_replaced_and_the_service_answers_again(service):
    old_pid = requests.get(f"{service}/v1/model", headers=AUTH, timeout=30).json()["replica"]["pid"]
    with ThreadPoolExecutor(4) as pool:
        inflight = [pool.submit(generate, service, seed=i) for i in range(8)]
        time.sleep(0.5)
        os.kill(old_pid, signal.SIGKILL)
        codes = [f.result().status_code for f in inflight]  # some may fail while the replica is down
    assert all(c in (200, 500, 502, 503) for c in codes), codes

    def replaced() -> bool:
        r = requests.get(f"{service}/v1/model", headers=AUTH, timeout=10)
        return r.status_code == 200 and r.json()["replica"]["pid"] != old_pid

    wait_until(replaced, 180, "a new replica")
    r = generate(service, seed=5)
    assert r.status_code == 200, r.text
    assert pixels(r.json()["images"][0]["png_base64"]).shape == (64, 64, 3)
