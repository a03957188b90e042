"""Activation memory of one training step of SDXL's real-size UNet, measured on this machine's CPU.

    flock /tmp/ambient-heavy.lock python benchmarks/activation_memory.py [--latents 32 64] [--lora-rank 4]

For each latent size, a fresh spawned process builds the UNet at SDXL's published configuration
(random weights, float32, about 10.3 GB), attaches LoRA adapters (so that the only gradients are the
adapters' few megabytes and what is measured is activations), turns gradient checkpointing on, resets
the kernel's peak resident size (``/proc/self/clear_refs``), runs one training step (forward +
backward) at batch 1 with SDXL's conditioning shapes (77 x 2048 encoder states, 1280 pooled text
embedding, 6 time ids) and reads the peak (``VmHWM``): peak minus the resident size before the step is
the step's memory above the resident model (the adapters' first gradients, about 23 MB, included).
glibc's allocator is told to map every allocation above 64 KiB on its own and to give freed memory
back at once (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_), so the resident size follows the live
tensors. Each result is written to the JSON file (default docs/results/activation_memory.json) as
soon as it is measured.

Heavy: 12-16 GB of RAM and minutes of every core. Run it alone (under the lock above).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue as queue_module
import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "activation_memory.json"
KIB = 1024


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.M).group(1))


def _reset_peak() -> None:
    """Set the kernel's peak resident size (VmHWM) of this process back to its current size."""
    Path("/proc/self/clear_refs").write_text("5")


def _inputs(latent: int, batch: int = 1) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    return {
        "sample": torch.randn(batch, 4, latent, latent, generator=g),
        "timestep": torch.full((batch,), 500.0),
        "encoder_hidden_states": torch.randn(batch, 77, 2048, generator=g),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(batch, 1280, generator=g),
            "time_ids": torch.tensor(
                [[8.0 * latent, 8.0 * latent, 0, 0, 8.0 * latent, 8.0 * latent]] * batch
            ),
        },
    }


def _step(unet, inputs: dict) -> None:
    out = unet(**inputs).sample
    out.float().pow(2).mean().backward()


def measure(latent: int, lora_rank: int, threads: int) -> dict:
    """One latent size, in this (fresh) process: peak bytes above the resident model, and seconds."""
    import torch
    from diffusers import UNet2DConditionModel

    from ambient.models.lora import add_lora
    from ambient.models.real_size import UNET_CONFIG

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel(**UNET_CONFIG)
    add_lora(unet, rank=lora_rank)
    unet.enable_gradient_checkpointing()
    unet.train()
    build_s = time.perf_counter() - t0
    inputs = _inputs(latent)
    resident = _status_kib("VmRSS") * KIB
    _reset_peak()
    t0 = time.perf_counter()
    _step(unet, inputs)
    step_s = time.perf_counter() - t0
    peak = _status_kib("VmHWM") * KIB
    params = sum(p.numel() for p in unet.parameters())
    return {
        "latent": latent,
        "pixels": latent * 8,
        "batch": 1,
        "dtype": "float32",
        "gradient_checkpointing": True,
        "lora_rank": lora_rank,
        "unet_parameters": params,
        "resident_bytes": resident,
        "peak_bytes": peak,
        "activation_bytes": peak - resident,
        "step_seconds": round(step_s, 2),
        "build_seconds": round(build_s, 2),
        "threads": threads,
        "allocator_env": dict(ALLOCATOR_ENV),
    }


def _child(latent: int, lora_rank: int, threads: int, queue) -> None:
    queue.put(measure(latent, lora_rank, threads))


# Set before the child starts: glibc reads them once, at its first allocation.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def measure_in_fresh_process(latent: int, lora_rank: int, threads: int) -> dict:
    os.environ.update(ALLOCATOR_ENV)  # the spawned interpreter inherits this environment
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(latent, lora_rank, threads, queue))
    proc.start()
    while True:  # a child killed for memory never reports: stop waiting when it is gone
        try:
            result = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(
                    f"measurement at {latent}x{latent} latents died ({proc.exitcode})"
                ) from None
    proc.join()
    return result


def _write(out: Path, results: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "what": "one training step (forward + backward) of SDXL's real-size UNet, random weights, LoRA "
        "adapters trainable, gradient checkpointing, float32 on CPU; activation_bytes = peak resident "
        "(VmHWM, reset before the step) minus resident before the step, with glibc mapping every allocation "
        "above 64 KiB on its own and trimming freed memory at once",
        "command": "flock /tmp/ambient-heavy.lock python benchmarks/activation_memory.py",
        "results": sorted(results, key=lambda r: r["latent"]),
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=int, nargs="+", default=[32, 64], help="latent sizes (px / 8)")
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    results: list[dict] = []
    for latent in args.latents:
        result = measure_in_fresh_process(latent, args.lora_rank, args.threads)
        results.append(result)
        _write(args.out, results)
        gb = result["activation_bytes"] / 1e9
        print(
            f"{latent}x{latent} latents: {gb:.2f} GB above resident, step {result['step_seconds']} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
