"""GPU capacity planning for SDXL fine-tunes: memory per GPU, the largest micro-batch that fits, and what
a run keeps on S3. Pure arithmetic on parameter counts and a measured activation size; the model-state
terms are DeepSpeed's own estimators. ``benchmarks/capacity.py`` feeds it and writes docs/capacity.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

GIB = 2**30

# Bytes per element by training precision. DeepSpeed casts the UNet (trainable and frozen weights) to it.
PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
FP32 = 4

# What is held back from a GPU's memory before any tensor: the CUDA context, cuBLAS/cuDNN workspaces and
# NCCL buffers (a fixed part), and the caching allocator's fragmentation (a share of the rest).
CONTEXT_BYTES = int(1.5 * GIB)
FRAGMENTATION_SHARE = 0.10


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int  # what nvidia-smi reports as total memory
    instance_1: str  # an AWS instance type with one such GPU
    instance_8: str  # an AWS instance type with eight
    host_bytes_per_gpu: int  # the eight-GPU instance's RAM divided by its GPUs (for CPU offload)


MIB = 2**20
GPUS = (
    Gpu("A10G 24 GB", 23028 * MIB, "g5.4xlarge", "g5.48xlarge", 96 * GIB),
    Gpu("L4 24 GB", 23034 * MIB, "g6.4xlarge", "g6.48xlarge", 96 * GIB),
    Gpu("L40S 48 GB", 46068 * MIB, "g6e.4xlarge", "g6e.48xlarge", 192 * GIB),
    Gpu("A100 40 GB", 40960 * MIB, "-", "p4d.24xlarge", 144 * GIB),
    Gpu("A100 80 GB", 81920 * MIB, "-", "p4de.24xlarge", 144 * GIB),
    Gpu("H100 80 GB", 81559 * MIB, "-", "p5.48xlarge", 256 * GIB),
)


@dataclass(frozen=True)
class ModelCounts:
    """Parameter counts of the SDXL components (from the real-size architecture)."""

    unet: int
    unet_largest_layer: int  # the most parameters any one module owns directly (ZeRO-3 gathers it whole)
    lora: int  # trainable LoRA parameters at the config's rank (0 for a full fine-tune)
    vae: int
    text_encoder: int
    text_encoder_2: int


@dataclass(frozen=True)
class RunShape:
    """What the plan reads from a fine-tune config."""

    name: str
    lora_rank: int
    precision: str
    batch_size: int
    num_workers: int
    keep_checkpoints: int
    ema_decay: float | None
    consistency_weight: float
    consistency_fraction: float
    lora_export: str = "adapter"  # model.lora_export: adapter, or merged (the full folder as well)

    @property
    def trainable_is_lora(self) -> bool:
        return self.lora_rank > 0


@dataclass(frozen=True)
class Strategy:
    zero_stage: int  # 2 or 3
    offload: bool  # ZeRO-2: optimizer to CPU; ZeRO-3: optimizer and parameters to CPU

    @property
    def label(self) -> str:
        return f"ZeRO-{self.zero_stage}" + (" + CPU offload" if self.offload else "")


STRATEGIES = tuple(Strategy(stage, offload) for stage in (2, 3) for offload in (False, True))


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU (and per GPU on the host, for offload) before activations."""

    model_states: int  # DeepSpeed's estimate for the trainable parameters (weights, gradients, Adam)
    frozen_unet: int  # a LoRA run's base UNet weights, which DeepSpeed's estimators do not count
    ema: int  # the fp32 EMA shadow of the trainable parameters, when the config keeps one
    frozen_components: int  # VAE and both text encoders
    host: int  # CPU memory DeepSpeed's estimator asks per GPU (offloaded states, buffers)

    @property
    def gpu_total(self) -> int:
        return self.model_states + self.frozen_unet + self.ema + self.frozen_components


def trainable_params(counts: ModelCounts, shape: RunShape) -> int:
    return counts.lora if shape.trainable_is_lora else counts.unet


def deepspeed_model_states(
    total_params: int, largest_layer_params: int, strategy: Strategy, world: int
) -> tuple[int, int]:
    """(host bytes per GPU, GPU bytes per GPU) from DeepSpeed's estimators, all GPUs on one node.

    The estimators assume 16-bit mixed precision with Adam: per trainable parameter 2 bytes of 16-bit
    weights, 2 of 16-bit and 4 of fp32 gradients, 4 of fp32 master weights and 8 of moments (20 bytes);
    ZeRO-2 keeps the 16-bit weights whole and divides the other 18 by the GPUs (offload: all 18 go to
    the host); ZeRO-3 divides all 20 and adds the largest layer, gathered whole in fp32 (4 bytes per
    parameter; offload: only that layer stays on the GPU). Host memory carries a 1.5x buffer factor.
    """
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if strategy.zero_stage == 2:
        cpu, gpu = estimate_zero2_model_states_mem_needs(
            total_params=total_params, num_gpus_per_node=world, num_nodes=1, cpu_offload=strategy.offload
        )
    elif strategy.zero_stage == 3:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total_params=total_params,
            largest_layer_params=largest_layer_params,
            num_gpus_per_node=world,
            num_nodes=1,
            cpu_offload=strategy.offload,
            cpu_offload_params=strategy.offload,
            zero_init=False,  # the loop builds the whole UNet on every worker, then hands it to DeepSpeed
        )
    else:
        raise ValueError(f"the plan covers ZeRO stages 2 and 3, not {strategy.zero_stage}")
    return cpu // world, gpu


def frozen_component_bytes(counts: ModelCounts, precision: str) -> int:
    """The frozen text encoders in the training precision, and SDXL's VAE in float32 (it overflows in
    float16, and the loop keeps a VAE that needs upcasting in float32)."""
    return PRECISION_BYTES[precision] * (counts.text_encoder + counts.text_encoder_2) + FP32 * counts.vae


def memory_per_gpu(counts: ModelCounts, shape: RunShape, strategy: Strategy, world: int) -> Memory:
    if shape.precision not in ("bf16", "fp16"):
        raise ValueError(f"DeepSpeed's estimators assume 16-bit mixed precision, not {shape.precision}")
    trainable = trainable_params(counts, shape)
    host, states = deepspeed_model_states(trainable, counts.unet_largest_layer, strategy, world)
    frozen_unet = 0
    if shape.trainable_is_lora:
        weights = PRECISION_BYTES[shape.precision] * counts.unet
        if strategy.zero_stage == 3:  # ZeRO-3 partitions every module parameter, frozen ones too
            frozen_unet, host = (0, host + weights // world) if strategy.offload else (weights // world, host)
        else:
            frozen_unet = weights
    return Memory(
        model_states=states,
        frozen_unet=frozen_unet,
        ema=FP32 * trainable if shape.ema_decay else 0,
        frozen_components=frozen_component_bytes(counts, shape.precision),
        host=host,
    )


# ---- activations -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationPoint:
    """One measurement: a training step's bytes above the resident model at one latent size."""

    latent: int
    activation_bytes: int
    dtype_bytes: int = FP32


def scaling_exponent(points: list[ActivationPoint]) -> float:
    """How activations grow with the latent pixel count between the smallest and largest measurement,
    never below 1 (linear: every layer's activations are proportional to the pixels; diffusers' attention
    uses scaled_dot_product_attention, whose memory-efficient kernels keep no pixels x pixels matrix)."""
    lo, hi = min(points, key=lambda p: p.latent), max(points, key=lambda p: p.latent)
    if lo.latent == hi.latent:
        return 1.0
    ratio = math.log(hi.activation_bytes / lo.activation_bytes) / math.log(hi.latent**2 / lo.latent**2)
    return max(1.0, ratio)


def activation_bytes_per_row(points: list[ActivationPoint], latent: int, precision: str) -> int:
    """A training row's activation bytes at ``latent`` x ``latent`` in ``precision``: the largest measured
    point scaled by (pixels ratio) ** exponent, and by the precision's bytes over the measured dtype's."""
    hi = max(points, key=lambda p: p.latent)
    pixels = (latent / hi.latent) ** 2
    scale = pixels ** scaling_exponent(points) * PRECISION_BYTES[precision] / hi.dtype_bytes
    return int(hi.activation_bytes * scale)


def rows_with_gradient(shape: RunShape, batch: int) -> int:
    """Rows whose activations are kept for the backward pass in one micro-step: the ambient loss's batch,
    plus, on consistency steps, the two chains' final grad-carrying pass over the consistency sub-batch
    (the anchor and the chains' earlier steps run without gradient)."""
    if shape.consistency_weight <= 0:
        return batch
    return batch + 2 * max(1, math.ceil(shape.consistency_fraction * batch))


def usable_bytes(gpu: Gpu) -> int:
    return int((gpu.memory_bytes - CONTEXT_BYTES) * (1 - FRAGMENTATION_SHARE))


def max_batch(gpu: Gpu, memory: Memory, row_bytes: int, shape: RunShape, limit: int = 256) -> int:
    """The largest per-GPU micro-batch whose model states, frozen models and activations fit ``gpu``
    (0: not even one row), and only if the host holds what the strategy offloads."""
    if memory.host > gpu.host_bytes_per_gpu:
        return 0
    room = usable_bytes(gpu) - memory.gpu_total
    fits = [b for b in range(1, limit + 1) if rows_with_gradient(shape, b) * row_bytes <= room]
    return max(fits, default=0)


# ---- storage -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Storage:
    checkpoint_bytes: int  # one checkpoint, all ranks' files together
    export_bytes: int
    kept_bytes: int  # keep_checkpoints checkpoints plus the export

    def as_dict(self) -> dict:
        return asdict(self)


def checkpoint_bytes(counts: ModelCounts, shape: RunShape, zero_stage: int) -> int:
    """What ``engine.save_checkpoint`` plus the loop write per checkpoint.

    DeepSpeed's optimizer files hold, over all ranks, the fp32 master weights and both Adam moments of
    the trainable parameters (12 bytes each). Its model-states file holds the trainable weights in the
    training precision under ZeRO-2 and only placeholders under ZeRO-3. Frozen weights (a LoRA run's
    base UNet) are left out: the loop saves with ``exclude_frozen_parameters`` and a resume takes them
    from the base model. The loop adds the fp32 EMA shadow when it keeps one.
    """
    w = PRECISION_BYTES[shape.precision]
    trainable = trainable_params(counts, shape)
    optimizer = 12 * trainable
    module = w * trainable if zero_stage == 2 else 0
    ema = FP32 * trainable if shape.ema_decay else 0
    return optimizer + module + ema


def export_bytes(counts: ModelCounts, shape: RunShape) -> int:
    """The export. A full fine-tune (or a LoRA run with ``lora_export: merged``) writes a diffusers
    folder: the trained UNet in the training precision, a LoRA run's adapter again under lora/, and
    the base folder's VAE and text encoders copied as they are (float32 in SDXL base's default files).
    A LoRA run's default export is its adapter alone, in the training precision."""
    w = PRECISION_BYTES[shape.precision]
    adapter = w * counts.lora if shape.trainable_is_lora else 0
    if shape.trainable_is_lora and shape.lora_export == "adapter":
        return adapter
    return w * counts.unet + adapter + FP32 * (counts.vae + counts.text_encoder + counts.text_encoder_2)


def storage(counts: ModelCounts, shape: RunShape, zero_stage: int) -> Storage:
    ckpt = checkpoint_bytes(counts, shape, zero_stage)
    export = export_bytes(counts, shape)
    return Storage(ckpt, export, shape.keep_checkpoints * ckpt + export)
