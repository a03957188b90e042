"""The whole platform path at SDXL's real size (2.6 B-parameter UNet, random weights), one phase at a time.

    python benchmarks/sdxl_scale.py                       # this machine: CPU, 256 px (about 15 minutes)
    python benchmarks/sdxl_scale.py --text-embeddings --phases prepare finetune   # on stored embeddings
    python benchmarks/sdxl_scale.py --profile gpu         # the GPU acceptance check (make gpu-check)

Each phase runs the platform's own job as a user would (``jobs/*.py`` with ``--set`` overrides) on a
random-weight diffusers folder with SDXL's published architecture (``ambient.models.real_size``):

    build      write the real-size folder (float16 on disk, about 7 GB; kept between runs)
    prepare    jobs/prepare_shards.py: synthetic images through the real-size VAE -> noisy latent shards,
               and a held-out set for the validation loss
    finetune   jobs/finetune.py: LoRA with the consistency loss, a checkpoint, a sample grid and the
               validation loss forced early, the adapter export (gpu: also the full UNet under ZeRO-2)
    serve      jobs/serve.py on the export, one HTTP request, stopped by its PID
    audit      jobs/audit.py on a few items (cpu profile)

Per phase it records wall seconds and the peak resident memory of the job's whole process tree (the
driver, its local Ray cluster and workers; RSS summed and sampled every 0.5 s, so shared pages count
once per process) and of its largest process (the train worker, the Serve replica), and on GPU the peak
device memory (nvidia-smi); per training step the seconds from the run's summary. The first phase that
fails stops the run with its log's tail. Results go to ``--json`` after every phase. The gpu profile
exits with status 2 where no CUDA GPU is present, and refuses to start on a disk with less room than
the run writes (about 80 GiB with the full fine-tune's checkpoint; ``--skip-full`` leaves it out).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ambient.train.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle on a blue background", "a green square on a white background"]


@dataclass(frozen=True)
class Profile:
    resolution: int
    rows: int
    heldout_rows: int
    lora_steps: int
    full_steps: int  # 0: no full fine-tune
    batch: int
    precision: str
    use_gpu: bool
    threads: int
    sample_steps: int
    audit: bool
    finetune_sets: tuple[str, ...] = field(default=())


PROFILES = {
    # Fits 24 GiB of RAM on 2 cores: float32 weights on CPU, small images, a handful of steps.
    "cpu": Profile(resolution=256, rows=8, heldout_rows=2, lora_steps=3, full_steps=0, batch=1,
                   precision="fp32", use_gpu=False, threads=2, sample_steps=2, audit=True,
                   finetune_sets=("consistency.steps=1", "validation.every_steps=2",
                                  "train.checkpoint_every=2")),
    # One 80 GB GPU within about 8 minutes: SDXL's size and resolution.
    "gpu": Profile(resolution=1024, rows=64, heldout_rows=8, lora_steps=20, full_steps=10, batch=2,
                   precision="bf16", use_gpu=True, threads=8, sample_steps=20, audit=False,
                   finetune_sets=("validation.every_steps=10", "train.checkpoint_every=10")),
}  # fmt: skip


class PeakSampler:
    """Peak summed RSS of a process and its descendants, and peak GPU memory in use (all processes)."""

    def __init__(self, pid: int, gpu: bool) -> None:
        self.pid, self.gpu = pid, gpu
        self.rss_peak, self.process_peak, self.gpu_peak = 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            tree = _tree_rss(self.pid)
            self.rss_peak = max(self.rss_peak, sum(tree))
            self.process_peak = max(self.process_peak, max(tree, default=0))
            if self.gpu:
                self.gpu_peak = max(self.gpu_peak, _gpu_used())
            self._stop.wait(0.5)


def _tree_rss(pid: int) -> list[int]:
    """RSS of a process and each of its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    sizes = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            sizes.append(p.memory_info().rss)
    return sizes


def _gpu_used() -> int:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return int(out[0]) * 2**20 if out else 0


class Bench:
    def __init__(self, args: argparse.Namespace, profile: Profile) -> None:
        self.args, self.p = args, profile
        self.work = args.work.resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs = self.work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.results: dict = {"profile": args.profile, "settings": profile.__dict__, "phases": {}}
        self.env = {**os.environ, "PYTHONPATH": str(ROOT / "platform"), "PYTHONUNBUFFERED": "1"}

    # ---- running a phase ---------------------------------------------------------------------------

    def run(self, name: str, cmd: list[str]) -> dict:
        """Run one job to its end; record seconds and peaks; stop the benchmark on failure."""
        log = self.logs / f"{name}.log"
        print(f"[sdxl_scale] {name}: {' '.join(cmd[1:])[:300]}", flush=True)
        start = time.perf_counter()
        with open(log, "w") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            with PeakSampler(proc.pid, self.p.use_gpu) as peak:
                rc = self._wait(proc, log)
        seconds = time.perf_counter() - start
        record = {
            "seconds": round(seconds, 1),
            "peak_rss_gib": round(peak.rss_peak / 2**30, 2),
            "peak_process_rss_gib": round(peak.process_peak / 2**30, 2),  # e.g. the train worker
        }
        if self.p.use_gpu:
            record["peak_gpu_gib"] = round(peak.gpu_peak / 2**30, 2)
        record["returncode"] = rc
        self.results["phases"][name] = record
        self.save()
        if rc != 0:
            tail = log.read_text()[-6000:]
            self.fail(f"phase {name} failed (exit {rc}); its log {log} ends:\n{tail}")
        print(f"[sdxl_scale] {name}: {record}", flush=True)
        return record

    def _wait(self, proc: subprocess.Popen, log: Path) -> int:
        deadline = time.monotonic() + self.args.phase_timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.terminate()
                proc.wait(60)
                self.fail(f"phase timed out after {self.args.phase_timeout} s: see {log}")
            time.sleep(1)
        return proc.returncode

    def fail(self, message: str) -> None:
        self.results["failed"] = message.splitlines()[0]
        self.save()
        print(f"[sdxl_scale] FAILED: {message}", file=sys.stderr, flush=True)
        raise SystemExit(1)

    def save(self) -> None:
        if self.args.json:
            self.args.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.args.json.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.results, indent=2) + "\n")
            tmp.replace(self.args.json)

    def job(self, script: str, *sets: str, config: str | None = None) -> list[str]:
        cmd = [sys.executable, str(ROOT / "jobs" / script)]
        if config:
            cmd += ["--config", config]
        for s in sets:
            cmd += ["--set", s]
        return cmd

    # ---- the phases --------------------------------------------------------------------------------

    @property
    def model(self) -> Path:
        return self.work / "sdxl-real-size-random"

    def layout(self, name: str) -> RunLayout:
        """Where fine-tune ``name`` leaves its files (its run folder under work/ray)."""
        return RunLayout.of(str(self.work / "ray"), name)

    def build(self) -> None:
        code = (
            "import sys; from ambient.models.real_size import write_real_size_folder; "
            "write_real_size_folder(sys.argv[1])"
        )
        self.run("build", [sys.executable, "-c", code, str(self.model)])
        files = [f for f in self.model.rglob("*") if f.is_file()]
        self.results["model_folder_gib"] = round(sum(f.stat().st_size for f in files) / 2**30, 2)

    def prepare(self, text: bool = False) -> None:
        """Training and held-out shards; ``text``: with stored text embeddings (encode.text_embeddings)."""
        p, suffix = self.p, "_text" if text else ""
        for name, world, count in (
            ("prepare", "shapes", p.rows),
            ("prepare_heldout", "heldout", p.heldout_rows),
        ):
            dest = self.work / (("shards" if name == "prepare" else "heldout") + suffix)
            self.run(
                name + suffix,
                self.job(
                    "prepare_shards.py",
                    f"encode.model={self.model}",
                    f"resolution={p.resolution}",
                    "source.kind=synthetic",
                    f"source.world={world}",
                    f"source.count={count}",
                    "source.replay_world=null",
                    "source.replay_share=0",
                    f"destination.uri={dest}",
                    "destination.overwrite=true",
                    "noise.sigma_n=null",
                    "noise.t_n=500",  # the authors' middle setting: sigma_n 1.62
                    f"rows_per_shard={max(count // 2, 1)}",
                    f"encode.text_embeddings={str(text).lower()}",
                ),
            )
        shards = self.work / f"shards{suffix}"
        manifest = json.loads((shards / "manifest.json").read_text())
        shard_bytes = sum(f.stat().st_size for f in shards.glob("*.parquet"))
        self.results[f"shard_bytes_per_row{suffix}"] = round(shard_bytes / max(manifest["num_rows"], 1))

    def finetune(self, name: str, lora: bool, steps: int, text: bool = False) -> None:
        p, suffix = self.p, "_text" if text else ""
        layout = self.layout(name)
        sets = [
            f"model.path={self.model}",
            f"model.lora_rank={4 if lora else 0}",
            "model.gradient_checkpointing=true",
            f"data.uri={self.work / ('shards' + suffix)}",
            "data.prepare_if_missing=false",
            "loss.sigma_sampling=timesteps",
            "consistency.weight=1",
            "consistency.every=1",
            "consistency.fraction=1",
            f"optim.lr={1e-4 if lora else 1e-5}",
            "optim.warmup_steps=0",
            "deepspeed.zero_stage=2",
            f"deepspeed.precision={p.precision}",
            f"train.batch_size={p.batch}",
            f"train.max_steps={steps}",
            "train.log_every=1",
            "train.keep_checkpoints=1",
            f"train.threads_per_worker={p.threads}",
            f"validation.data_uri={self.work / ('heldout' + suffix)}",
            f"validation.rows={p.heldout_rows}",
            f"validation.num_steps={p.sample_steps}",
            f"validation.prompts={json.dumps(PROMPTS)}",
            "showcase.enabled=false",
            "scaling.num_workers=1",
            f"scaling.use_gpu={str(p.use_gpu).lower()}",
            f"scaling.cpus_per_worker={p.threads}",
            f"run.storage_path={layout.storage_path}",
            f"run.name={layout.name}",
            *p.finetune_sets,
        ]
        shutil.rmtree(layout.run_dir, ignore_errors=True)  # a fresh run, not a resume
        self.run(name, self.job("finetune.py", *sets))
        summary = json.loads(Path(layout.summary).read_text())
        history = summary.get("history") or []
        export = Path(summary["exported_model"])
        checkpoints = [Path(c) for c in summary.get("checkpoints") or []]
        record = self.results["phases"][name]
        record.update(
            step_seconds=[round(h["step_seconds"], 2) for h in history if h.get("step_seconds")],
            images_per_second=summary.get("images_per_second"),
            final_loss=summary.get("final_loss"),
            validation_loss=summary.get("final_val_ambient_loss"),
            consistency_loss=summary.get("final_consistency_loss"),
            export_gib=round(_folder_bytes(export) / 2**30, 3),
            checkpoint_gib=round(_folder_bytes(checkpoints[-1]) / 2**30, 3) if checkpoints else None,
            sample_grids=summary.get("sample_grids"),
            exported_model=str(export),
        )
        self.save()

    def serve(self, export: str) -> None:
        port = self.args.port
        cmd = self.job(
            "serve.py",
            f"model={export}",
            f"http.port={port}",
            f"limits.max_pixels={self.p.resolution**2}",
            "defaults.steps=2",
            f"replica.num_gpus={1 if self.p.use_gpu else 0}",
            f"replica.dtype={'bfloat16' if self.p.use_gpu else 'float32'}",
            "batching.fixed_shape=false",
        )
        log = self.logs / "serve.log"
        start = time.perf_counter()
        with open(log, "w") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                with PeakSampler(proc.pid, self.p.use_gpu) as peak:
                    url = self._await_url(proc, log)
                    ready = time.perf_counter() - start
                    body = {"prompt": PROMPTS[0], "seed": 0, "steps": self.p.sample_steps,
                            "height": self.p.resolution, "width": self.p.resolution}  # fmt: skip
                    t0 = time.perf_counter()
                    answer = _post(f"{url}/v1/generate", body, timeout=self.args.phase_timeout)
                    request = time.perf_counter() - t0
            finally:
                proc.terminate()  # the job deletes its app and stops the Ray cluster it started
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()
        image = self.work / "serve.png"
        image.write_bytes(base64.b64decode(answer["images"][0]["png_base64"]))
        record = {
            "seconds_to_ready": round(ready, 1),
            "request_seconds": round(request, 1),
            "model_seconds": answer.get("model_seconds"),
            "size": [answer.get("width"), answer.get("height")],
            "peak_rss_gib": round(peak.rss_peak / 2**30, 2),
            "peak_process_rss_gib": round(peak.process_peak / 2**30, 2),
        }
        if self.p.use_gpu:
            record["peak_gpu_gib"] = round(peak.gpu_peak / 2**30, 2)
        self.results["phases"]["serve"] = record
        self.save()
        print(f"[sdxl_scale] serve: {record}", flush=True)

    def _await_url(self, proc: subprocess.Popen, log: Path) -> str:
        deadline = time.monotonic() + self.args.phase_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.fail(f"serve exited {proc.returncode} before answering; its log {log} ends:\n"
                          f"{log.read_text()[-6000:]}")  # fmt: skip
            for line in log.read_text().splitlines():
                if line.startswith("http://"):
                    return line.strip().rstrip("/")
            time.sleep(2)
        self.fail(f"serve did not answer within {self.args.phase_timeout} s: see {log}")
        raise AssertionError  # unreachable: fail exits

    def audit(self, export: str) -> None:
        self.run(
            "audit",
            self.job(
                "audit.py",
                f"models=[{{path: {export}, label: sdxl-real-size}}]",
                "items.kind=synthetic",
                "items.count=2",
                f"items.resolution={self.p.resolution}",
                "attack.sample=false",
                "generation.n=2",
                f"generation.steps={self.p.sample_steps}",
                "batch_size=1",
                f"threads={self.p.threads}",
                f"output_dir={self.work / 'audit'}",
            ),
        )


def disk_needed_bytes(profile: Profile) -> int:
    """Disk the run writes at most: the model folder (float16), and per fine-tune its checkpoint twice
    (Ray Train copies the worker's folder into run storage) plus its export (ambient.capacity's sizes)."""
    from ambient import capacity
    from ambient.models.real_size import PUBLISHED_PARAMETERS as P

    counts = capacity.ModelCounts(P["unet"], 0, 0, P["vae"], P["text_encoder"], P["text_encoder_2"])
    full = capacity.RunShape("full", 0, profile.precision, profile.batch, 1, 1, None, 1.0, 1.0)
    total = 2 * sum(P.values())
    if profile.full_steps:
        store = capacity.storage(counts, full, zero_stage=2)
        total += 2 * store.checkpoint_bytes + store.export_bytes
    return total


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def _post(url: str, body: dict, timeout: float) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--work", type=Path, help="working folder (default runs/sdxl_scale_<profile>)")
    parser.add_argument("--json", type=Path, help="results (default docs/results/sdxl_scale_<profile>.json)")
    parser.add_argument("--phases", nargs="+", default=["build", "prepare", "finetune", "serve", "audit"])
    parser.add_argument(
        "--text-embeddings",
        action="store_true",
        help="prepare and fine-tune on shards with stored text embeddings (phases *_text; the workers "
        "load no text encoders), to compare with the default run",
    )
    parser.add_argument(
        "--skip-full",
        action="store_true",
        help="gpu: leave out the full fine-tune (its 34 GiB checkpoint needs about 80 GiB of free disk)",
    )
    parser.add_argument("--port", type=int, default=8731)
    parser.add_argument("--phase-timeout", type=float, default=3600.0)
    args = parser.parse_args()
    args.work = args.work or ROOT / "runs" / f"sdxl_scale_{args.profile}"
    args.json = args.json or ROOT / "docs" / "results" / f"sdxl_scale_{args.profile}.json"
    profile = PROFILES[args.profile]
    if args.skip_full:
        profile = dataclasses.replace(profile, full_steps=0)
    if profile.use_gpu:
        import torch

        if not torch.cuda.is_available():
            print("sdxl_scale --profile gpu: no CUDA GPU is present; this check needs one", file=sys.stderr)
            raise SystemExit(2)
    needed, free = (
        disk_needed_bytes(profile),
        shutil.disk_usage(args.work.parent if not args.work.exists() else args.work).free,
    )
    if free < needed:
        print(
            f"sdxl_scale --profile {args.profile}: {args.work} has {free / 2**30:.0f} GiB free, the run writes up "
            f"to {needed / 2**30:.0f} GiB (the full fine-tune's checkpoint twice while Ray copies it, and its "
            "export); free some, pass --work on a larger disk, or --skip-full",
            file=sys.stderr,
        )
        raise SystemExit(1)
    bench = Bench(args, profile)
    if args.json.exists():  # phases not rerun keep their earlier numbers
        previous = json.loads(args.json.read_text())
        if previous.get("profile") == args.profile:
            previous.pop("failed", None)
            bench.results = {**previous, "settings": profile.__dict__}
    bench.results["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    phases = args.phases
    if "build" in phases:
        bench.build()
    text = args.text_embeddings
    if "prepare" in phases:
        bench.prepare(text)
    lora_export = bench.layout("sdxl-lora").model
    if "finetune" in phases:
        bench.finetune(
            "sdxl-lora" + ("-text" if text else ""), lora=True, steps=profile.lora_steps, text=text
        )
        if profile.full_steps:
            bench.finetune("sdxl-full", lora=False, steps=profile.full_steps)
    if "serve" in phases:
        bench.serve(lora_export)
    if "audit" in phases and profile.audit:
        bench.audit(lora_export)
    bench.results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    bench.save()
    print(json.dumps(bench.results["phases"], indent=2))


if __name__ == "__main__":
    main()
