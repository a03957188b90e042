"""Capacity plan: which GPU each SDXL fine-tune config fits on, at what micro-batch, and what it stores.

    python benchmarks/capacity.py

Reads jobs/configs/sdxl_lora.yaml and sdxl_full.yaml with the project's config loader, counts the real
SDXL architecture's parameters on the meta device, runs DeepSpeed's model-state estimators, scales the
activation memory measured by benchmarks/activation_memory.py (docs/results/activation_memory.json) to
1024 px, and writes docs/results/capacity.json and docs/capacity.md.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from ambient import capacity as cap

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = (ROOT / "jobs/configs/sdxl_lora.yaml", ROOT / "jobs/configs/sdxl_full.yaml")
ACTIVATIONS = ROOT / "docs/results/activation_memory.json"
OUT_JSON = ROOT / "docs/results/capacity.json"
OUT_MD = ROOT / "docs/capacity.md"
LATENT = 128  # 1024 px
RELPATH = {p: p.relative_to(ROOT).as_posix() for p in CONFIGS}


def load_shape(path: Path) -> tuple[cap.RunShape, int]:
    """The plan's view of a config, and its configured ZeRO stage."""
    from ambient.config import load_config
    from ambient.train import FinetuneConfig

    cfg = load_config(FinetuneConfig, path)
    shape = cap.RunShape(
        name=RELPATH[path],
        lora_rank=cfg.model.lora_rank,
        precision=cfg.deepspeed.precision,
        batch_size=cfg.train.batch_size,
        num_workers=cfg.scaling.num_workers,
        keep_checkpoints=cfg.train.keep_checkpoints,
        ema_decay=cfg.train.ema_decay,
        consistency_weight=cfg.consistency.weight,
        consistency_fraction=cfg.consistency.fraction,
        lora_export=cfg.model.lora_export,
    )
    return shape, cfg.deepspeed.zero_stage


def largest_layer(module) -> int:
    """DeepSpeed's ZeRO-3 "largest layer": the most parameters one module owns directly."""
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in module.modules())


def count_parameters(lora_rank: int) -> cap.ModelCounts:
    """Counts from SDXL's real-size architecture, built on the meta device (no memory, seconds)."""
    from ambient.models.lora import add_lora
    from ambient.models.real_size import build_real_size

    model = build_real_size("meta")
    unet_total = sum(p.numel() for p in model.unet.parameters())
    biggest = largest_layer(model.unet)
    lora = 0
    if lora_rank:
        add_lora(model.unet, rank=lora_rank)
        lora = sum(p.numel() for p in model.unet.parameters() if p.requires_grad)
    return cap.ModelCounts(
        unet=unet_total,
        unet_largest_layer=biggest,
        lora=lora,
        vae=sum(p.numel() for p in model.vae.parameters()),
        text_encoder=sum(p.numel() for p in model.text_encoder.parameters()),
        text_encoder_2=sum(p.numel() for p in model.text_encoder_2.parameters()),
    )


def load_activations(path: Path) -> tuple[list[cap.ActivationPoint], list[dict]]:
    if not path.is_file():
        raise SystemExit(
            f"{path} is missing: measure it first with "
            "`flock /tmp/ambient-heavy.lock python benchmarks/activation_memory.py`"
        )
    results = json.loads(path.read_text())["results"]
    points = [cap.ActivationPoint(r["latent"], r["activation_bytes"]) for r in results]
    return points, results


def measured_growth(points: list[cap.ActivationPoint]) -> dict:
    """How much the activations grew between the smallest and largest measurement, against the pixels."""
    lo, hi = min(points, key=lambda p: p.latent), max(points, key=lambda p: p.latent)
    return {
        "bytes_ratio": hi.activation_bytes / lo.activation_bytes,
        "pixels_ratio": (hi.latent / lo.latent) ** 2,
    }


def plan_config(shape: cap.RunShape, counts: cap.ModelCounts, row_bytes: int) -> list[dict]:
    """One row per (world size, strategy, GPU): memory per GPU and the largest micro-batch."""
    rows = []
    for world in sorted({shape.num_workers, 1}, reverse=True):
        for strategy in cap.STRATEGIES:
            memory = cap.memory_per_gpu(counts, shape, strategy, world)
            for gpu in cap.GPUS:
                batch = cap.max_batch(gpu, memory, row_bytes, shape)
                rows.append(
                    {
                        "world": world,
                        "strategy": strategy.label,
                        "zero_stage": strategy.zero_stage,
                        "offload": strategy.offload,
                        "gpu": gpu.name,
                        "memory": asdict(memory) | {"gpu_total": memory.gpu_total},
                        "usable_bytes": cap.usable_bytes(gpu),
                        "max_batch": batch,
                        "configured_batch_fits": batch >= shape.batch_size,
                    }
                )
    return rows


def build_plan() -> dict:
    points, measured = load_activations(ACTIVATIONS)
    plan: dict = {
        "latent": LATENT,
        "pixels": LATENT * 8,
        "activations": {
            "measured": measured,
            "scaling_exponent": cap.scaling_exponent(points),
            "measured_growth": measured_growth(points),
        },
        "allowance": {"context_bytes": cap.CONTEXT_BYTES, "fragmentation_share": cap.FRAGMENTATION_SHARE},
        "gpus": [asdict(g) for g in cap.GPUS],
        "configs": [],
    }
    for path in CONFIGS:
        shape, stage = load_shape(path)
        counts = count_parameters(shape.lora_rank)
        row_bytes = cap.activation_bytes_per_row(points, LATENT, shape.precision)
        plan["configs"].append(
            {
                "shape": asdict(shape),
                "configured_zero_stage": stage,
                "counts": asdict(counts),
                "activation_bytes_per_row": row_bytes,
                "rows_at_configured_batch": cap.rows_with_gradient(shape, shape.batch_size),
                "plan": plan_config(shape, counts, row_bytes),
                "storage": {f"zero{s}": cap.storage(counts, shape, s).as_dict() for s in (2, 3)},
            }
        )
    return plan


# ---- the document ------------------------------------------------------------------------------------


def gib(n: float) -> str:
    return f"{n / cap.GIB:.1f}"


def gb(n: float) -> str:
    return f"{n / 1e9:.1f}"


def batch_table(entry: dict, world: int) -> list[str]:
    gpus = [g.name for g in cap.GPUS]
    lines = ["| strategy | " + " | ".join(gpus) + " |", "| --- |" + " ---: |" * len(gpus)]
    for strategy in cap.STRATEGIES:
        cells = {
            r["gpu"]: r["max_batch"]
            for r in entry["plan"]
            if r["world"] == world and r["strategy"] == strategy.label
        }
        shown = [str(cells[g]) if cells[g] else "-" for g in gpus]
        lines.append(f"| {strategy.label} | " + " | ".join(shown) + " |")
    return lines


def memory_table(entry: dict, world: int) -> list[str]:
    lines = [
        "| strategy | model states | frozen UNet | EMA | VAE + text encoders | total before activations "
        "| host per GPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    first_gpu = cap.GPUS[0].name
    for r in entry["plan"]:
        if r["world"] != world or r["gpu"] != first_gpu:
            continue
        m = r["memory"]
        lines.append(
            f"| {r['strategy']} | {gib(m['model_states'])} | {gib(m['frozen_unet'])} | {gib(m['ema'])} "
            f"| {gib(m['frozen_components'])} | {gib(m['gpu_total'])} | {gib(m['host'])} |"
        )
    return lines


def fits_summary(entry: dict) -> list[str]:
    """Which GPUs run the config as it stands (its ZeRO stage, no offload, its world size and batch)."""
    shape = entry["shape"]
    stage = entry["configured_zero_stage"]
    rows = [
        r
        for r in entry["plan"]
        if r["world"] == shape["num_workers"] and r["zero_stage"] == stage and not r["offload"]
    ]
    ok = [r["gpu"] for r in rows if r["configured_batch_fits"]]
    no = [r["gpu"] for r in rows if not r["configured_batch_fits"]]
    text = (
        f"As configured (ZeRO-{stage}, no offload, {shape['num_workers']} GPUs, micro-batch "
        f"{shape['batch_size']}), `{shape['name']}` fits on: {', '.join(ok) or 'none of these GPUs'}"
    )
    if no:
        text += f"; not on: {', '.join(no)}"
    return [text + "."]


def config_section(entry: dict) -> list[str]:
    shape, counts = entry["shape"], entry["counts"]
    kind = f"LoRA rank {shape['lora_rank']}" if shape["lora_rank"] else "full UNet fine-tune"
    trainable = counts["lora"] if shape["lora_rank"] else counts["unet"]
    lines = [
        f"## `{shape['name']}`: {kind}",
        "",
        f"{trainable:,} trainable parameters, {shape['precision']}, micro-batch {shape['batch_size']} per GPU, "
        f"{shape['num_workers']} workers, ZeRO-{entry['configured_zero_stage']} in the config. Activations at "
        f"1024 px: {gib(entry['activation_bytes_per_row'])} GiB per row with gradient; a micro-batch of "
        f"{shape['batch_size']} keeps {entry['rows_at_configured_batch']} such rows (consistency weight "
        f"{shape['consistency_weight']}, fraction {shape['consistency_fraction']}).",
        "",
        *fits_summary(entry),
        "",
    ]
    for world in sorted({shape["num_workers"], 1}, reverse=True):
        lines += [
            f"### {world} GPU{'s' if world > 1 else ''}: memory per GPU before activations (GiB)",
            "",
            *memory_table(entry, world),
            "",
            f"### {world} GPU{'s' if world > 1 else ''}: largest micro-batch per GPU at 1024 px (- = does not fit)",
            "",
            *batch_table(entry, world),
            "",
        ]
    return lines


def storage_section(plan: dict) -> list[str]:
    lines = [
        "## Storage on S3 per run",
        "",
        "| config | ZeRO stage | one checkpoint (GB) | export (GB) | kept checkpoints | total (GB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for entry in plan["configs"]:
        shape = entry["shape"]
        for key, s in entry["storage"].items():
            lines.append(
                f"| `{shape['name']}` | {key[-1]} | {gb(s['checkpoint_bytes'])} | {gb(s['export_bytes'])} "
                f"| {shape['keep_checkpoints']} | {gb(s['kept_bytes'])} |"
            )
    return lines


def measured_section(plan: dict) -> list[str]:
    lines = [
        "## Activation memory (measured)",
        "",
        "| resolution | latents | above resident model (GB) | step (s) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for r in plan["activations"]["measured"]:
        lines.append(
            f"| {r['pixels']} px | {r['latent']}x{r['latent']} | {r['activation_bytes'] / 1e9:.2f} | {r['step_seconds']} |"
        )
    return lines


def sublinear_note(growth: dict) -> str:
    if growth["bytes_ratio"] >= growth["pixels_ratio"]:
        return ""
    return (
        " (part of the measured amount does not grow with the resolution, so scaling all of it with the "
        "pixels over-estimates 1024 px rather than under-estimates it)"
    )


def fitting_gpus(entry: dict, world: int) -> list[str]:
    """GPUs where the config runs with its own ZeRO stage, no offload and its micro-batch on ``world`` GPUs."""
    stage = entry["configured_zero_stage"]
    return [
        r["gpu"]
        for r in entry["plan"]
        if r["world"] == world
        and r["zero_stage"] == stage
        and not r["offload"]
        and r["configured_batch_fits"]
    ]


def recommendation(plan: dict) -> list[str]:
    lines = [
        "## Which GPU for which config",
        "",
        "| config | fits as configured (its GPUs, ZeRO stage, micro-batch) | fits even on 1 GPU (same stage and micro-batch) |",
        "| --- | --- | --- |",
    ]
    for entry in plan["configs"]:
        shape = entry["shape"]
        many = ", ".join(fitting_gpus(entry, shape["num_workers"])) or "none"
        one = ", ".join(fitting_gpus(entry, 1)) or "none"
        lines.append(f"| `{shape['name']}` | {many} | {one} |")
    lines += [
        "",
        "The cluster definitions (`cluster/aws/ambient.yaml`, `cluster/kuberay/`) give LoRA 24 GB GPUs and the "
        "full fine-tune the GPUs on which it fits even unsharded: there the run does not depend on ZeRO "
        "dividing its optimizer states over exactly its configured number of GPUs, and the 8 GPUs of one "
        "p4de/p5 node reduce the full UNet's gradients over NVLink rather than between single-GPU nodes.",
        "",
    ]
    return lines


def render(plan: dict) -> str:
    exponent = plan["activations"]["scaling_exponent"]
    growth = plan["activations"]["measured_growth"]
    allowance = plan["allowance"]
    lines = [
        "# Capacity plan: which GPU to rent",
        "",
        "Generated by `python benchmarks/capacity.py` from `jobs/configs/sdxl_lora.yaml`, "
        "`jobs/configs/sdxl_full.yaml` and `docs/results/activation_memory.json`; the numbers are in "
        "`docs/results/capacity.json`. Edit a config, re-run the script, and this page follows. GiB = 2^30 "
        "bytes; GB = 10^9 bytes (S3 sizes).",
        "",
        "## How a GPU's memory is spent",
        "",
        "- **Model states** (DeepSpeed's `estimate_zero2_model_states_mem_needs` / "
        "`estimate_zero3_model_states_mem_needs`, fed with the trainable parameter count of SDXL's real "
        "architecture): 16-bit mixed precision with Adam, 20 bytes per trainable parameter (2 for 16-bit "
        "weights, 2 + 4 for 16-bit and fp32 gradients, 4 for fp32 master weights, 8 for both moments). "
        "ZeRO-2 keeps the 16-bit weights whole on every GPU and divides the other 18 bytes by the number "
        "of GPUs; with offload those 18 bytes live in host memory. ZeRO-3 divides all 20 bytes and adds the "
        "largest layer gathered whole (4 bytes per parameter); with offload (optimizer and parameters) "
        "only that layer stays on the GPU. Host memory includes DeepSpeed's 1.5x buffer factor and "
        "assumes every worker builds the whole UNet before DeepSpeed takes it (no `zero.Init`), as the "
        "training loop does.",
        "- **Frozen UNet** (LoRA only): DeepSpeed casts the whole UNet to the training precision but its "
        "estimators count only trainable parameters, so the base weights are added: whole on every GPU "
        "under ZeRO-2, divided by the GPUs under ZeRO-3 (ZeRO-3 partitions frozen parameters too), on the "
        "host with ZeRO-3 offload.",
        "- **EMA**: an fp32 copy of the trainable parameters on every GPU when `train.ema_decay` is set "
        "(ZeRO-3 runs refuse it).",
        "- **VAE + text encoders**: frozen and resident on every GPU, the text encoders in the training "
        "precision and SDXL's VAE in float32 (it overflows in float16).",
        f"- **Activations**: measured on CPU in float32 at 256 and 512 px (gradient checkpointing, batch 1, "
        f"the real-size UNet with SDXL's conditioning shapes; below), scaled to 1024 px by the pixel count "
        f"to the power {exponent:.2f} (the measured growth between the two sizes, never below 1: every "
        f"layer's activations are proportional to the latent pixels, and diffusers' attention runs through "
        f"`scaled_dot_product_attention`, whose memory-efficient kernels hold no pixels x pixels matrix), "
        f"then halved for bf16. Measured growth: {growth['bytes_ratio']:.2f}x for {growth['pixels_ratio']:.0f}x "
        f"the pixels{sublinear_note(growth)}. A micro-batch of b keeps b rows with gradient, plus 2 x ceil(fraction x b) "
        f"on consistency steps (the two chains' final pass carries gradient; the anchor and earlier chain "
        f"steps do not).",
        f"- **Allowance**: {gib(allowance['context_bytes'])} GiB per GPU for the CUDA context, cuBLAS/cuDNN "
        f"workspaces and NCCL buffers, then {allowance['fragmentation_share']:.0%} of the rest for the "
        f"caching allocator's fragmentation. A micro-batch fits when states + frozen models + activations "
        f"stay below what is left, and (with offload) the host holds DeepSpeed's host estimate; host memory "
        f"per GPU is the eight-GPU instance's RAM divided by eight.",
        "- Not counted: the periodic validation grid (a no-grad sampling pass and a float32 VAE decode at "
        "1024 px) runs between steps, when activations are free; its VAE decode peak is not in these tables.",
        "",
        "## GPUs",
        "",
        "| GPU | memory (GiB) | usable after allowance (GiB) | 1-GPU instance | 8-GPU instance | host RAM per GPU (GiB) |",
        "| --- | ---: | ---: | --- | --- | ---: |",
    ]
    for g in cap.GPUS:
        lines.append(
            f"| {g.name} | {gib(g.memory_bytes)} | {gib(cap.usable_bytes(g))} | {g.instance_1} | {g.instance_8} "
            f"| {gib(g.host_bytes_per_gpu)} |"
        )
    lines += ["", *recommendation(plan), *measured_section(plan), ""]
    for entry in plan["configs"]:
        lines += config_section(entry)
    lines += [
        *storage_section(plan),
        "",
        "A checkpoint is DeepSpeed's `save_checkpoint` plus the loop's state: optimizer files with fp32 "
        "master weights and both Adam moments of the trainable parameters (12 bytes each, over all ranks); "
        "the model-states file with the trainable weights in the training precision under ZeRO-2 or "
        "placeholders under ZeRO-3; the fp32 EMA shadow when `train.ema_decay` is set. Frozen weights (a "
        "LoRA run's base UNet) are left out (`exclude_frozen_parameters`): a resume takes them from the "
        "base model. A full fine-tune's export (`outputs/model/`) is a diffusers folder: the trained UNet "
        "in the training precision and the base folder's VAE and text encoders copied as they are (float32 "
        "in SDXL base's default files). A LoRA run exports its adapter and a reference to the base "
        "(`model.lora_export: merged` adds the full folder). Ray Train keeps `train.keep_checkpoints` "
        "checkpoints.",
        "",
        "## Re-running",
        "",
        "    flock /tmp/ambient-heavy.lock python benchmarks/activation_memory.py   # minutes, 12-16 GB RAM",
        "    python benchmarks/capacity.py                                         # seconds",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    plan = build_plan()
    OUT_JSON.write_text(json.dumps(plan, indent=2) + "\n")
    OUT_MD.write_text(render(plan))
    print(f"wrote {OUT_JSON.relative_to(ROOT)} and {OUT_MD.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
