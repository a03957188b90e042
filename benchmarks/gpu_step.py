"""The GPU path: a real-size SDXL UNet (random weights) trained with the ambient objective in bf16 under
DeepSpeed ZeRO-2 at 1024 px (128x128 latents); reports images/s with and without the consistency loss.

    python benchmarks/gpu_step.py [--batch 2] [--steps 10] [--json out.json]

Exits with status 2 and a clear message where no CUDA GPU is present. Single process, world size 1
(the multi-GPU path is the same engine under Ray Train; see jobs/configs/sdxl_*.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from ambient.models.real_size import UNET_CONFIG as SDXL_UNET


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2, help="per GPU (the authors' setting)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_step: no CUDA GPU is present; this benchmark measures the GPU path only", file=sys.stderr)
        raise SystemExit(2)

    import deepspeed
    from diffusers import UNet2DConditionModel

    from ambient.core import sdxl_alphas_cumprod
    from ambient.models.denoiser import SDXLDenoiser
    from ambient.train.batch import ModelInputs
    from ambient.train.config import FinetuneConfig
    from ambient.train.deepspeed_config import build_deepspeed_config
    from ambient.train.objective import training_loss

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    deepspeed.init_distributed(dist_backend="nccl")
    device = torch.device("cuda", 0)

    unet = UNet2DConditionModel(**SDXL_UNET)
    unet.enable_gradient_checkpointing()
    params = sum(p.numel() for p in unet.parameters())
    g = torch.Generator().manual_seed(0)
    b = args.batch
    inputs = ModelInputs(
        y=torch.randn(b, 4, 128, 128, generator=g).to(device),
        sigma_n=torch.full((b,), 1.62, device=device),  # SDXL t_n = 500
        cond={
            "encoder_hidden_states": torch.randn(b, 77, 2048, generator=g).to(device),
            "text_embeds": torch.randn(b, 1280, generator=g).to(device),
            "time_ids": torch.tensor(
                [[1024, 1024, 0, 0, 1024, 1024]] * b, dtype=torch.float32, device=device
            ),
        },
    )
    results = {"unet_parameters": params, "batch_per_gpu": b, "gpu": torch.cuda.get_device_name(0)}
    for consistency in (False, True):
        cfg = FinetuneConfig()
        cfg.scaling.use_gpu = True
        cfg.train.batch_size = b
        cfg.deepspeed.precision = "bf16"
        cfg.deepspeed.zero_stage = 2
        cfg.consistency.weight = 1.0 if consistency else 0.0
        model = UNet2DConditionModel(**SDXL_UNET) if consistency else unet
        model.enable_gradient_checkpointing()
        engine, *_ = deepspeed.initialize(
            model=model, model_parameters=model.parameters(), config=build_deepspeed_config(cfg)
        )
        den = SDXLDenoiser(engine, sdxl_alphas_cumprod().float())
        gen = torch.Generator().manual_seed(1)
        times = []
        for step in range(args.steps + 2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            engine.backward(training_loss(den, inputs, cfg, step, den.train_sigmas, gen).total)
            engine.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        step_s = sum(times[2:]) / args.steps
        key = "with_consistency" if consistency else "ambient_only"
        results[key] = {
            "seconds_per_step": step_s,
            "images_per_second": b / step_s,
            "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
        print(
            f"{key:18s} {b / step_s:6.2f} img/s  {step_s:.3f} s/step  "
            f"peak {results[key]['max_memory_gib']:.1f} GiB"
        )
        del engine, model
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    results["consistency_step_time_ratio"] = (
        results["with_consistency"]["seconds_per_step"] / results["ambient_only"]["seconds_per_step"]
    )
    print(
        f"consistency step-time ratio {results['consistency_step_time_ratio']:.2f}x  ({params / 1e9:.2f} B params)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
