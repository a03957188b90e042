"""The DeepSpeed config generated from the typed job config (one place; `deepspeed.extra` merges last)."""

from __future__ import annotations

from typing import Any

import torch

from ambient.config import deep_merge

from .config import FinetuneConfig


def _scheduler(cfg: FinetuneConfig) -> dict[str, Any]:
    o = cfg.optim
    total = cfg.train.max_steps
    warmup = min(o.warmup_steps, max(total - 1, 0))
    # DeepSpeed's schedulers reject 0 warm-up steps (and warm up over at least 2): no warm-up is a ramp
    # that starts at the peak, so `warmup_steps: 0` (or a 1-step run) trains at the full rate at once
    # (with the cosine schedule from the second step: WarmupCosineLR gives 0 before its first step).
    start = 0.0 if warmup else 1.0
    warmup = max(warmup, 1)
    if o.schedule == "constant":
        return {
            "type": "WarmupLR",
            "params": {
                "warmup_min_lr": start * o.lr,
                "warmup_max_lr": o.lr,
                "warmup_num_steps": warmup,
                "warmup_type": "linear",
            },
        }
    if o.schedule == "linear":
        return {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": start * o.lr,
                "warmup_max_lr": o.lr,
                "warmup_num_steps": warmup,
                "total_num_steps": total,
                "warmup_type": "linear",
            },
        }
    return {
        "type": "WarmupCosineLR",
        "params": {
            "total_num_steps": total,
            "warmup_num_steps": warmup,
            "warmup_min_ratio": start,
            "cos_min_ratio": 0.0,
        },
    }


# deepspeed.precision -> the dtype the frozen text encoders and VAE run in on GPU
FROZEN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def frozen_dtype(cfg: FinetuneConfig) -> torch.dtype:
    """The frozen text encoders and VAE run in the training precision on GPU (half their float32
    memory) and in float32 on CPU; ``models.vae.vae_dtype`` keeps a VAE that overflows in float16 in
    float32 regardless."""
    if not cfg.scaling.use_gpu:
        return torch.float32
    return FROZEN_DTYPES[cfg.deepspeed.precision]


def build_deepspeed_config(cfg: FinetuneConfig) -> dict[str, Any]:
    ds, o = cfg.deepspeed, cfg.optim
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": ds.offload_optimizer, "pin_memory": cfg.scaling.use_gpu}
    if ds.offload_param != "none":
        zero["offload_param"] = {"device": ds.offload_param, "pin_memory": cfg.scaling.use_gpu}
    if ds.zero_stage == 3:
        # Gather full weights on save so the export and the sampling grids see the whole UNet.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    adam: dict[str, Any] = {"lr": o.lr, "betas": list(o.betas), "weight_decay": o.weight_decay, "eps": 1e-8}
    if ds.offload_optimizer == "none":
        adam["torch_adam"] = True  # plain torch AdamW: no JIT-compiled fused optimizer needed (CPU or GPU)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": o.grad_accum,
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": adam},
        "scheduler": _scheduler(cfg),
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if o.grad_clip > 0:
        config["gradient_clipping"] = o.grad_clip
    return deep_merge(config, ds.extra)


def skip_shm_comm_op() -> None:
    """Keep DeepSpeed from compiling its CPU shared-memory all-reduce op.

    On a CPU machine every DeepSpeed process group JIT-builds ``deepspeed_shm_comm`` with the C++
    compiler (measured here: 55-135 s of both cores alone, over 300 s under load, and again whenever
    its build flags differ from the cached build's), yet only ``inference_all_reduce`` uses it: training
    never does. Marked incompatible, DeepSpeed uses torch.distributed's collectives, as it does on
    machines where the op cannot build. GPU accelerators offer no such op: there it returns at once,
    before DeepSpeed's probe of every op (which DeepSpeed itself skips there too).
    """
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().get_op_builder("ShareMemCommBuilder") is None:
        return
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # the probed dict; edits persist
