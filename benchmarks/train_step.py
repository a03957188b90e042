"""Training-step benchmarks, measured as ratios inside one run on the same machine:

1. platform overhead: the same UNet, batch and thread count, a plain PyTorch loop (torch AdamW) vs one
   Ray Train worker driving a DeepSpeed engine (ZeRO-2, fp32, torch Adam). Target >= 0.85x throughput.
2. consistency cost: the step time of the real objective (ambient.train.objective) with the
   consistency loss at its default settings vs ambient only. Target <= 1.5x.

    python benchmarks/train_step.py [--batch 32] [--steps 20] [--threads 2] [--json out.json]

Inputs are fixed random latents at sigma_n = 0.5 with real prompt embeddings from the tiny model, so
both sides do exactly the same arithmetic; the data path is measured by benchmarks/data_throughput.py.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ambient.models.tiny import build_tiny_pipeline
from ambient.ray_init import init_ray
from ambient.train.batch import ModelInputs, conditioning
from ambient.train.config import FinetuneConfig


def make_inputs(batch: int, seed: int = 0) -> tuple[ModelInputs, torch.Tensor, object]:
    pipe = build_tiny_pipeline(seed=seed)
    from ambient.models.loading import SDXLComponents

    comps = SDXLComponents.from_pipeline(pipe)
    g = torch.Generator().manual_seed(seed)
    size = comps.unet.config.sample_size
    y = torch.randn(batch, 4, size, size, generator=g)
    captions = [f"a red circle on a blue background {i}" for i in range(batch)]
    hw = torch.tensor([[64, 64]] * batch)
    cond = conditioning(comps, captions, hw, torch.zeros(batch, 2, dtype=torch.long), (64, 64))
    return ModelInputs(y=y, sigma_n=torch.full((batch,), 0.5), cond=cond), comps.alphas_cumprod, comps.unet


def config(consistency: bool, batch: int) -> FinetuneConfig:
    cfg = FinetuneConfig()
    cfg.train.batch_size = batch
    cfg.consistency.weight = 1.0 if consistency else 0.0
    return cfg


def timed_steps(step_fn, steps: int, warmup: int = 3) -> float:
    """Seconds per step after ``warmup`` steps."""
    for i in range(warmup):
        step_fn(i)
    start = time.perf_counter()
    for i in range(steps):
        step_fn(warmup + i)
    return (time.perf_counter() - start) / steps


def plain_loop(batch: int, steps: int, threads: int, consistency: bool) -> float:
    from ambient.models.denoiser import SDXLDenoiser
    from ambient.train.objective import training_loss

    torch.set_num_threads(threads)
    inputs, alphas, unet = make_inputs(batch)
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, weight_decay=1e-2)
    den = SDXLDenoiser(unet, alphas)
    cfg, gen = config(consistency, batch), torch.Generator().manual_seed(1)

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        training_loss(den, inputs, cfg, i, den.train_sigmas, gen).total.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()

    return timed_steps(step, steps)


def _ray_worker(config_: dict) -> None:
    import deepspeed

    from ambient.models.denoiser import SDXLDenoiser
    from ambient.train.deepspeed_config import build_deepspeed_config, skip_shm_comm_op
    from ambient.train.objective import training_loss

    torch.set_num_threads(config_["threads"])
    skip_shm_comm_op()
    inputs, alphas, unet = make_inputs(config_["batch"])
    unet.train()
    cfg = config(False, config_["batch"])
    engine, *_ = deepspeed.initialize(
        model=unet, model_parameters=list(unet.parameters()), config=build_deepspeed_config(cfg)
    )
    den = SDXLDenoiser(engine, alphas)
    gen = torch.Generator().manual_seed(1)

    def step(i: int) -> None:
        engine.backward(training_loss(den, inputs, cfg, i, den.train_sigmas, gen).total)
        engine.step()

    # Written to a file: a Ray Train V2 result keeps only checkpointed metrics (same machine here).
    Path(config_["out"]).write_text(json.dumps({"seconds_per_step": timed_steps(step, config_["steps"])}))


def ray_deepspeed(batch: int, steps: int, threads: int) -> float:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    init_ray(None, threads)
    with tempfile.TemporaryDirectory() as storage:
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={
                "batch": batch,
                "steps": steps,
                "threads": threads,
                "out": f"{storage}/result.json",
            },
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": threads}),
            run_config=RunConfig(name="bench", storage_path=storage),
            torch_config=TorchConfig(backend="gloo"),
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        return json.loads(Path(storage, "result.json").read_text())["seconds_per_step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    plain = plain_loop(args.batch, args.steps, args.threads, consistency=False)
    plain_cons = plain_loop(args.batch, args.steps, args.threads, consistency=True)
    platform = ray_deepspeed(args.batch, args.steps, args.threads)
    plain_again = plain_loop(args.batch, args.steps, args.threads, consistency=False)  # drift check
    base = (plain + plain_again) / 2
    result = {
        "batch": args.batch,
        "steps": args.steps,
        "threads": args.threads,
        "plain_seconds_per_step": [plain, plain_again],
        "plain_with_consistency_seconds_per_step": plain_cons,
        "ray_deepspeed_seconds_per_step": platform,
        "platform_throughput_ratio": base / platform,
        "consistency_step_time_ratio": plain_cons / plain,
    }
    print(
        f"plain PyTorch loop         {args.batch / plain:7.1f} img/s  ({plain:.3f} s/step; again {plain_again:.3f})"
    )
    print(f"Ray Train + DeepSpeed      {args.batch / platform:7.1f} img/s  ({platform:.3f} s/step)")
    print(f"  throughput ratio         {result['platform_throughput_ratio']:.2f}x   (target >= 0.85x)")
    print(f"with consistency (default) {args.batch / plain_cons:7.1f} img/s  ({plain_cons:.3f} s/step)")
    print(f"  step time ratio          {result['consistency_step_time_ratio']:.2f}x   (target <= 1.5x)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
