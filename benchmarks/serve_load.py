"""Serving benchmark, measured as ratios inside one run on the same machine (results: docs/benchmarks.md).

1. latency (p50/p99) and throughput through Serve at concurrency 1, 4 and 16;
2. overhead: Serve's single-request latency vs a direct call of the same sampler in this process
   (target: <= 1.2x + 20 ms), on the unbatched deployment so that only Serve/HTTP/FastAPI is measured;
   direct calls and Serve requests alternate, so that the machine's load drifts out of the ratio;
3. batching: throughput at concurrency 16 with batching vs without (target >= 1.5x).

    python benchmarks/serve_load.py [--model PATH] [--steps 10] [--requests 96] [--json out.json]

4. with --abuser (instead of 1-3): cost isolation. One deployment (the default config, its
   limits.max_request_cost set to the maximal request's cost) serves a mix at concurrency 16 (3 of 4
   requests cheap: 1 image, 2 steps, guidance 1; 1 of 4 maximal: --max-images images, --steps steps,
   guidance --guidance), alone and beside one abusive client (--abuser-concurrency connections of
   back-to-back maximal requests, each with its own guidance_scale so that none share a model call,
   one in four over the cost limit). Reported: the cheap requests' p50/p95 with and without the abuser,
   and what the abuser got (status counts). The two phases alternate, --rounds times.

    python benchmarks/serve_load.py --abuser [--steps 10] [--abuse-seconds 60] [--json out.json]

Four deployments run side by side (the load alternates between them, burst by burst): unbatched,
batched with fixed-shape calls (the default config: 4-row calls on CPU), batched with 8-row fixed-shape
calls, and batched without fixed shape. Loads are bounded in count and time (--requests per level,
--level-timeout seconds) and only hit 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

VARIANTS = {
    "unbatched": {"batching": {"enabled": False, "fixed_shape": False}},
    "batched (fixed shape, default)": {"batching": {"enabled": True, "fixed_shape": True}},
    "batched (fixed shape, 8-row calls)": {
        "batching": {"enabled": True, "fixed_shape": True, "call_rows": 8}
    },
    "batched (no fixed shape)": {"batching": {"enabled": True, "fixed_shape": False}},
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def load(url: str, body: dict, concurrency: int, count: int, timeout_s: float) -> dict:
    """``count`` requests (fewer if ``timeout_s`` runs out) from ``concurrency`` client threads."""
    deadline = time.monotonic() + timeout_s
    sessions = [requests.Session() for _ in range(concurrency)]
    latencies: list[float] = []
    errors = 0
    batch_sizes: list[int] = []

    def worker(w: int) -> None:
        nonlocal errors
        i = w
        while i < count and time.monotonic() < deadline:
            start = time.perf_counter()
            r = sessions[w].post(f"{url}/v1/generate", json={**body, "seed": i}, timeout=300)
            latencies.append(time.perf_counter() - start)
            if r.status_code != 200:
                errors += 1
            else:
                batch_sizes.append(r.json()["batch_images"])
            i += concurrency

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    wall = time.perf_counter() - start
    return {
        "latencies": latencies,
        "wall_s": wall,
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "throughput_rps": len(latencies) / wall,
        "mean_batch_images": statistics.fmean(batch_sizes) if batch_sizes else 0.0,
    }


CHEAP = {"num_images": 1, "steps": 2, "guidance_scale": 1.0}


def mixed_load(url: str, prompt: str, maximal: dict, seconds: float) -> dict:
    """16 client threads for ``seconds``: 3 of 4 requests cheap, 1 of 4 maximal; latencies by kind."""
    deadline = time.monotonic() + seconds
    cheap: list[float] = []
    costly: list[float] = []
    errors: dict[int, int] = {}

    def worker(w: int) -> None:
        session, i = requests.Session(), 0
        while time.monotonic() < deadline:
            is_maximal = (w + i) % 4 == 0
            body = {"prompt": prompt, "height": 64, "width": 64, "seed": w * 100_000 + i}
            body.update(maximal if is_maximal else CHEAP)
            start = time.perf_counter()
            r = session.post(f"{url}/v1/generate", json=body, timeout=600)
            (costly if is_maximal else cheap).append(time.perf_counter() - start)
            if r.status_code != 200:
                errors[r.status_code] = errors.get(r.status_code, 0) + 1
            i += 1

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(worker, range(16)))
    return {"cheap": cheap, "maximal": costly, "errors": errors}


def abuse(url: str, prompt: str, maximal: dict, concurrency: int, stop: list[bool]) -> dict:
    """One client, ``concurrency`` connections of back-to-back maximal requests until ``stop[0]``:
    each with its own guidance_scale (no two share a call), one in four over the cost limit."""
    codes: dict[int, int] = {}

    def worker(w: int) -> None:
        session, i = requests.Session(), 0
        while not stop[0]:
            body = {"prompt": prompt, "height": 64, "width": 64, "seed": i, **maximal}
            body["guidance_scale"] = maximal["guidance_scale"] + (w * 10_000 + i) * 1e-4
            if i % 4 == 3:
                body["steps"] = maximal["steps"] + 1  # over limits.max_request_cost: a 422
            try:
                code = session.post(f"{url}/v1/generate", json=body, timeout=600).status_code
            except requests.RequestException:
                code = 0
            codes[code] = codes.get(code, 0) + 1
            i += 1

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    return codes


def abuser_benchmark(args: argparse.Namespace, choice, url: str) -> dict:
    """Cheap requests' latency under the mixed load, alone and beside one abusive client."""
    from ray import serve

    from ambient.core.sampling_spec import SamplingSpec
    from ambient.serve.app import build_application, load_serve_config
    from ambient.serve.cost import request_cost
    from ambient.serve.sampler import SamplingKey

    maximal = {"num_images": args.max_images, "steps": args.steps, "guidance_scale": args.guidance}
    inline = {
        "http": {"port": args.port},
        "limits": {"max_images_per_request": args.max_images, "max_steps": args.steps + 1},
        "defaults": {"steps": 2},
        "batching": {"max_batch_images": args.max_batch},
        "replica": {"num_cpus": 1, "torch_threads": args.threads},
    }
    method = load_serve_config(inline=inline).defaults.method
    key = SamplingKey(SamplingSpec("full", 0.0, args.steps, args.guidance, method), 64, 64)
    inline["limits"]["max_request_cost"] = request_cost(key, args.max_images)  # maximal fits, +1 step not
    cfg = load_serve_config(inline=inline)
    serve.run(build_application(cfg, choice), name="abuse", route_prefix="/abuse", blocking=False)
    url = f"{url}/abuse"
    wait_healthy(url)
    prompt = "a red circle on a blue background"
    mixed_load(url, prompt, maximal, 15)  # warm-up
    phases: dict[str, list[dict]] = {"alone": [], "with abuser": []}
    abuser_codes: dict[int, int] = {}
    for _ in range(args.rounds):
        phases["alone"].append(mixed_load(url, prompt, maximal, args.abuse_seconds))
        stop = [False]
        with ThreadPoolExecutor(1) as pool:
            abuser = pool.submit(abuse, url, prompt, maximal, args.abuser_concurrency, stop)
            phases["with abuser"].append(mixed_load(url, prompt, maximal, args.abuse_seconds))
            stop[0] = True
            for code, n in abuser.result().items():
                abuser_codes[code] = abuser_codes.get(code, 0) + n
    out: dict = {"maximal": {**maximal, "cost_megapixel_steps": cfg.limits.max_request_cost}}
    for name, runs in phases.items():
        cheap = [x for r in runs for x in r["cheap"]]
        costly = [x for r in runs for x in r["maximal"]]
        errors: dict[int, int] = {}
        for r in runs:
            for code, n in r["errors"].items():
                errors[code] = errors.get(code, 0) + n
        out[name] = {
            "cheap_requests": len(cheap),
            "cheap_p50_ms": 1000 * percentile(cheap, 50),
            "cheap_p95_ms": 1000 * percentile(cheap, 95),
            "maximal_requests": len(costly),
            "maximal_p95_ms": 1000 * percentile(costly, 95),
            "errors": errors,
        }
    out["abuser_status_counts"] = abuser_codes
    out["cheap_p95_ratio"] = out["with abuser"]["cheap_p95_ms"] / out["alone"]["cheap_p95_ms"]
    serve.delete("abuse")
    return out


def merge(runs: list[dict]) -> dict:
    """One level's bursts together: percentiles over all requests, throughput over all wall time."""
    lat = [x for r in runs for x in r["latencies"]]
    wall = sum(r["wall_s"] for r in runs)
    return {
        "concurrency": runs[0]["concurrency"],
        "requests": len(lat),
        "errors": sum(r["errors"] for r in runs),
        "p50_ms": 1000 * percentile(lat, 50),
        "p99_ms": 1000 * percentile(lat, 99),
        "throughput_rps": len(lat) / wall,
        "mean_batch_images": statistics.fmean(r["mean_batch_images"] for r in runs),
        "burst_rps": [round(r["throughput_rps"], 3) for r in runs],
    }


class Direct:
    """The same sampler called in this process, on the same model, settings and thread count."""

    def __init__(self, model_dir: str, body: dict, method: str, threads: int) -> None:
        import torch

        from ambient.core.sampling_spec import SamplingSpec
        from ambient.models.loading import load_components
        from ambient.serve.sampler import SamplingKey

        torch.set_num_threads(threads)
        self.comps = load_components(model_dir)
        res = body["height"]
        self.key = SamplingKey(
            SamplingSpec("full", 0.0, body["steps"], body["guidance_scale"], method), res, res
        )
        self.prompt = body["prompt"]

    def __call__(self, seed: int) -> float:
        from ambient.serve.sampler import generate

        start = time.perf_counter()
        generate(self.comps, self.key, [self.prompt], [""], [seed])
        return time.perf_counter() - start


def overhead_pairs(url: str, body: dict, direct: Direct, pairs: int) -> dict:
    """Direct call and single Serve request, alternated, so that the machine's load drifts out."""
    session = requests.Session()
    d, s, m = [], [], []
    for i in range(pairs + 2):
        t_direct = direct(i)
        start = time.perf_counter()
        r = session.post(f"{url}/v1/generate", json={**body, "seed": i}, timeout=300)
        t_serve = time.perf_counter() - start
        if r.status_code != 200:
            raise RuntimeError(f"serve request failed: {r.status_code} {r.text[:200]}")
        if i >= 2:  # warm-up
            d.append(t_direct)
            s.append(t_serve)
            m.append(r.json()["model_seconds"])
    dm, sm = statistics.median(d), statistics.median(s)
    return {
        "pairs": pairs,
        "direct_p50_ms": 1000 * dm,
        "serve_p50_ms": 1000 * sm,
        "replica_model_p50_ms": 1000 * statistics.median(m),  # the same call, timed inside the replica
        "ratio": sm / dm,
        "added_ms": 1000 * (sm - dm),
        "target_met": sm <= 1.2 * dm + 0.020,
    }


def wait_healthy(url: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/v1/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError("service not healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the demo export, else the tiny default)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument(
        "--requests", type=int, default=96, help="requests per concurrency level (c=1: a quarter)"
    )
    parser.add_argument("--level-timeout", type=float, default=120.0)
    parser.add_argument("--max-batch", type=int, default=8, help="batching.max_batch_images")
    parser.add_argument("--rounds", type=int, default=3, help="alternating bursts per level and variant")
    parser.add_argument("--pairs", type=int, default=16, help="direct/Serve pairs for the overhead")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, replica and direct alike")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--abuser", action="store_true", help="run only the cost-isolation benchmark (4.)")
    parser.add_argument("--abuse-seconds", type=float, default=60.0, help="seconds per phase and round")
    parser.add_argument("--abuser-concurrency", type=int, default=8, help="the abusive client's connections")
    parser.add_argument("--max-images", type=int, default=4, help="images of a maximal request")
    args = parser.parse_args()

    import ray
    from ray import serve

    from ambient.serve.app import build_application, load_serve_config
    from ambient.serve.model import choose_model

    choice = choose_model(args.model)
    print(f"model: {choice.label} ({choice.uri})", flush=True)
    body = {"prompt": "a red circle on a blue background", "steps": args.steps, "height": 64, "width": 64}
    body["guidance_scale"] = args.guidance
    base = {
        "http": {"port": args.port},
        "limits": {"max_images_per_request": 1},
        "batching": {"max_batch_images": args.max_batch, "batch_wait_timeout_s": 0.02},
        "replica": {"num_cpus": 1, "torch_threads": args.threads},
    }
    method = load_serve_config(inline=base).defaults.method
    url = f"http://127.0.0.1:{args.port}"
    results: dict = {"model": choice.label, "settings": {**body, "method": method, "threads": args.threads}}

    direct = None if args.abuser else Direct(choice.uri, body, method, args.threads)
    for attempt in range(3):  # Ray's 30 s node start-up limit is tight on a busy 2-core machine
        try:
            ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    serve.start(http_options={"host": "127.0.0.1", "port": args.port}, proxy_location="HeadOnly")
    urls = {}
    try:
        if args.abuser:
            results["abuser"] = abuser_benchmark(args, choice, url)
            print(json.dumps(results["abuser"]), flush=True)
            return
        # All three deployments run side by side and the load alternates between them, burst by burst:
        # this machine's load drifts by 2x within minutes, which sequential runs would read as a result.
        for i, (name, overrides) in enumerate(VARIANTS.items()):
            batching = {**base["batching"], **overrides["batching"]}
            cfg = load_serve_config(inline={**base, **overrides, "batching": batching})
            serve.run(build_application(cfg, choice), name=f"bench{i}", route_prefix=f"/v{i}", blocking=False)
            urls[name] = f"{url}/v{i}"
        for u in urls.values():
            wait_healthy(u)
            load(u, body, 8, 16, 120)  # warm-up, batch shapes included
        assert direct is not None
        results["overhead"] = overhead_pairs(urls["unbatched"], body, direct, args.pairs)
        print("overhead", json.dumps(results["overhead"]), flush=True)
        results["levels"] = []
        for c in (1, 4, 16):
            count = max(8, args.requests // 4) if c == 1 else args.requests
            bursts = {name: [] for name in urls}
            for _ in range(args.rounds):
                for name, u in urls.items():
                    bursts[name].append(load(u, body, c, count // args.rounds, args.level_timeout))
            for name, runs in bursts.items():
                level = {"variant": name, **merge(runs)}
                results["levels"].append(level)
                print(json.dumps(level), flush=True)
            base_rps = [r["throughput_rps"] for r in bursts["unbatched"]]
            results.setdefault("batching_speedup", {})[c] = {
                name: statistics.median(r["throughput_rps"] / b for r, b in zip(runs, base_rps, strict=True))
                for name, runs in bursts.items()
                if name != "unbatched"
            }
        for i in range(len(urls)):
            serve.delete(f"bench{i}")
    finally:
        serve.shutdown()
        ray.shutdown()
        print(json.dumps(results, indent=2))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
