"""ambient.capacity: the capacity plan's arithmetic (DeepSpeed's estimators on SDXL's counts)."""

from __future__ import annotations

import dataclasses

import pytest

from ambient import capacity as cap

# SDXL base 1.0's real-size counts (ambient.models.real_size), LoRA rank 4 on attention projections.
COUNTS = cap.ModelCounts(
    unet=2_567_463_684,
    unet_largest_layer=29_492_480,
    lora=5_806_080,
    vae=83_653_863,
    text_encoder=123_060_480,
    text_encoder_2=694_659_840,
)
LORA = cap.RunShape(
    name="lora",
    lora_rank=4,
    precision="bf16",
    batch_size=2,
    num_workers=8,
    keep_checkpoints=3,
    ema_decay=None,
    consistency_weight=1.0,
    consistency_fraction=0.25,
)
FULL = dataclasses.replace(LORA, name="full", lora_rank=0)
ZERO2, ZERO3 = cap.Strategy(2, False), cap.Strategy(3, False)
A10G = next(g for g in cap.GPUS if g.name.startswith("A10G"))
H100 = next(g for g in cap.GPUS if g.name.startswith("H100"))
ROW_1024_BF16 = 2 * cap.GIB  # an activation size per row, for the batch arithmetic


def test_full_finetune_model_states_follow_deepspeeds_bytes_per_parameter():
    one = cap.memory_per_gpu(COUNTS, FULL, ZERO2, world=1)
    assert one.model_states == 20 * COUNTS.unet  # 2 + 18 bytes per parameter on a single GPU
    eight = cap.memory_per_gpu(COUNTS, FULL, ZERO2, world=8)
    assert eight.model_states == 2 * COUNTS.unet + 18 * COUNTS.unet // 8
    assert one.frozen_unet == 0 and one.ema == 0
    assert one.frozen_components == 2 * (COUNTS.text_encoder + COUNTS.text_encoder_2) + 4 * COUNTS.vae


def test_zero3_model_states_shrink_with_world_size_and_keep_the_largest_layer():
    sizes = [cap.memory_per_gpu(COUNTS, FULL, ZERO3, world=n).model_states for n in (1, 2, 4, 8)]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    assert sizes[-1] > 4 * COUNTS.unet_largest_layer  # the gathered layer is never partitioned


def test_lora_counts_the_frozen_base_unet_that_deepspeed_leaves_out():
    m2 = cap.memory_per_gpu(COUNTS, LORA, ZERO2, world=8)
    assert m2.frozen_unet == 2 * COUNTS.unet  # bf16, whole on every GPU under ZeRO-2
    m3 = cap.memory_per_gpu(COUNTS, LORA, ZERO3, world=8)
    assert m3.frozen_unet == 2 * COUNTS.unet // 8  # partitioned under ZeRO-3
    off = cap.memory_per_gpu(COUNTS, LORA, cap.Strategy(3, True), world=8)
    assert off.frozen_unet == 0 and off.host >= 2 * COUNTS.unet // 8


def test_ema_adds_an_fp32_copy_of_the_trainable_parameters():
    ema = dataclasses.replace(FULL, ema_decay=0.999)
    assert cap.memory_per_gpu(COUNTS, ema, ZERO2, 8).ema == 4 * COUNTS.unet


def test_full_finetune_does_not_fit_24gb_on_one_gpu_and_lora_fits_at_batch_one():
    full = cap.memory_per_gpu(COUNTS, FULL, ZERO2, world=1)
    assert cap.max_batch(A10G, full, ROW_1024_BF16, FULL) == 0
    lora = cap.memory_per_gpu(COUNTS, LORA, ZERO2, world=1)
    assert cap.max_batch(A10G, lora, ROW_1024_BF16, LORA) >= 1
    assert cap.max_batch(H100, lora, ROW_1024_BF16, LORA) > cap.max_batch(A10G, lora, ROW_1024_BF16, LORA)


def test_consistency_rows_carry_gradient_and_count_against_the_batch():
    assert cap.rows_with_gradient(LORA, 1) == 3  # 1 ambient row + the two chains' final pass on 1 row
    assert cap.rows_with_gradient(LORA, 8) == 8 + 2 * 2
    assert cap.rows_with_gradient(dataclasses.replace(LORA, consistency_weight=0.0), 8) == 8


def test_activations_scale_with_pixels_and_halve_in_bf16():
    points = [cap.ActivationPoint(32, 1_000), cap.ActivationPoint(64, 4_000)]
    assert cap.scaling_exponent(points) == pytest.approx(1.0)
    assert cap.activation_bytes_per_row(points, 128, "bf16") == 8_000  # x4 pixels, / 2 bytes
    steeper = [cap.ActivationPoint(32, 1_000), cap.ActivationPoint(64, 8_000)]
    assert cap.scaling_exponent(steeper) == pytest.approx(1.5)
    flatter = [cap.ActivationPoint(32, 1_000), cap.ActivationPoint(64, 2_000)]
    assert cap.scaling_exponent(flatter) == 1.0  # never below linear


def test_max_batch_refuses_an_offload_the_host_cannot_hold():
    memory = dataclasses.replace(cap.memory_per_gpu(COUNTS, FULL, cap.Strategy(2, True), 1), host=10**13)
    assert cap.max_batch(H100, memory, ROW_1024_BF16, FULL) == 0


def test_storage_counts_optimizer_states_and_leaves_frozen_weights_out():
    full2 = cap.storage(COUNTS, FULL, 2)
    assert full2.checkpoint_bytes == 12 * COUNTS.unet + 2 * COUNTS.unet  # Adam + fp32 master, bf16 module
    assert cap.storage(COUNTS, FULL, 3).checkpoint_bytes == 12 * COUNTS.unet
    lora2 = cap.storage(COUNTS, LORA, 2)
    assert lora2.checkpoint_bytes == 14 * COUNTS.lora  # the adapter only: the base comes from the base model
    assert lora2.kept_bytes == 3 * lora2.checkpoint_bytes + lora2.export_bytes
    frozen_parts = 4 * (COUNTS.vae + COUNTS.text_encoder + COUNTS.text_encoder_2)
    assert full2.export_bytes == 2 * COUNTS.unet + frozen_parts
    assert lora2.export_bytes == 2 * COUNTS.lora  # the adapter alone
    merged = cap.storage(COUNTS, dataclasses.replace(LORA, lora_export="merged"), 2)
    assert merged.export_bytes == 2 * (COUNTS.unet + COUNTS.lora) + frozen_parts


def test_fp32_training_is_outside_the_estimators_assumptions():
    with pytest.raises(ValueError, match="16-bit"):
        cap.memory_per_gpu(COUNTS, dataclasses.replace(FULL, precision="fp32"), ZERO2, 8)
