"""Before and after, in one picture: what a fine-tune was shown, what the base drew, what it draws now.

For the first training rows of the dataset: the decoded noisy training example, a sample of the base
model and a sample of the fine-tuned model for the row's own caption, side by side, with the loss
curve beside them. Where the prompts belong to the synthetic shape world, prompt adherence is measured
for both models on the fine-tune's own captions (did it learn the new concept?) and on prompts of a
world the base already drew (did it forget?).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from ambient.core.sampling_spec import SamplingSpec
from ambient.models.loading import SDXLComponents
from ambient.models.vae import decode_latents, tensor_to_pil

from .adherence import adherence_prompts, parse_prompt, prompt_adherence
from .generation import generate_from_captions
from .results import AdherenceScore

TILE = 128  # pixels per image in the picture (64 px samples are upscaled, nearest neighbour)
HEADER = 22


@dataclass(frozen=True)
class ShowcaseSampling:
    """How the showcase samples one model: its ``SamplingSpec`` (its own default mode and level), the
    seed of the first image, and how many prompts share a sampling call."""

    spec: SamplingSpec
    seed: int = 0
    micro_batch: int = 4  # prompts per sampling call and images per VAE decode


def sample(comps: SDXLComponents, prompts: list[str], sampling: ShowcaseSampling, height: int) -> Tensor:
    """uint8 (N, 3, H, W) images, image i seeded with sampling.seed + i."""
    _, _, images = generate_from_captions(
        comps,
        prompts,
        len(prompts),
        spec=sampling.spec,
        seed=sampling.seed,
        height=height,
        width=height,
        batch_size=sampling.micro_batch,
    )
    return images


def _tile(image: Image.Image) -> Image.Image:
    return image.convert("RGB").resize((TILE, TILE), Image.NEAREST)


def comparison_picture(
    columns: dict[str, list[Image.Image]], captions: list[str], loss_curve: Image.Image | None
) -> Image.Image:
    """Rows of images (one column per entry of ``columns``) under a header, the loss curve on the right."""
    names = list(columns)
    rows = len(captions)
    caption_h = 14
    grid_w = TILE * len(names)
    grid_h = HEADER + rows * (TILE + caption_h)
    curve = None
    if loss_curve is not None:
        scale = grid_h / loss_curve.height
        curve = loss_curve.convert("RGB").resize((int(loss_curve.width * scale), grid_h), Image.BILINEAR)
    canvas = Image.new("RGB", (grid_w + (curve.width if curve else 0), grid_h), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(names):
        draw.text((c * TILE + 4, 4), name, fill="black")
    for r, caption in enumerate(captions):
        top = HEADER + r * (TILE + caption_h)
        for c, name in enumerate(names):
            canvas.paste(_tile(columns[name][r]), (c * TILE, top))
        draw.text((4, top + TILE), caption[: grid_w // 6], fill="black")
    if curve is not None:
        canvas.paste(curve, (grid_w, 0))
    return canvas


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@torch.no_grad()
def showcase(
    base: SDXLComponents,
    finetuned: SDXLComponents,
    rows: dict,
    *,
    base_sampling: ShowcaseSampling,
    finetuned_sampling: ShowcaseSampling,
    examples: int,
    adherence_count: int,
    retain_world: str | None,
    loss_curve: Image.Image | None = None,
) -> tuple[Image.Image, dict]:
    """The comparison picture and its numbers. ``rows``: training rows (read_rows) with latents and
    captions; the first ``examples`` are shown, the first ``adherence_count`` captions are scored."""
    captions = [str(c) for c in rows["captions"]]
    latents = rows["latent"].float()
    height = latents.shape[-1] * (2 ** (len(finetuned.vae.config.block_out_channels) - 1))
    shown = captions[:examples]
    noisy = tensor_to_pil(decode_latents(finetuned.vae, latents[:examples], finetuned_sampling.micro_batch))
    columns = {
        "noisy training example": noisy,
        "base model": tensor_to_pil(sample(base, shown, base_sampling, height)),
        "fine-tuned": tensor_to_pil(sample(finetuned, shown, finetuned_sampling, height)),
    }
    picture = comparison_picture(columns, shown, loss_curve)
    numbers: dict = {"examples": len(shown)}
    scored = captions[:adherence_count]
    if adherence_count and all(parse_prompt(c) for c in scored):
        prompt_sets = {"new_concept": scored}
        if retain_world:
            prompt_sets["retained"] = adherence_prompts(retain_world, adherence_count)
        numbers["adherence"] = {
            name: {
                "prompts": len(prompts),
                "world": retain_world if name == "retained" else "training captions",
                "base": prompt_adherence(sample(base, prompts, base_sampling, height), prompts).summary(),
                "finetuned": prompt_adherence(
                    sample(finetuned, prompts, finetuned_sampling, height), prompts
                ).summary(),
            }
            for name, prompts in prompt_sets.items()
        }
    return picture, numbers


def adherence_line(numbers: dict) -> list[str]:
    """Human-readable lines of the adherence numbers (for the end of the job's output)."""
    lines = []
    for name, entry in numbers.get("adherence", {}).items():
        base, tuned = AdherenceScore.from_dict(entry["base"]), AdherenceScore.from_dict(entry["finetuned"])
        lines.append(
            f"prompt adherence, {name.replace('_', ' ')} ({entry['prompts']} prompts, {entry['world']}): "
            f"base {base.adherence:.2f} -> fine-tuned {tuned.adherence:.2f} "
            f"(shape {base.shape:.2f} -> {tuned.shape:.2f}, "
            f"colours {base.colors:.2f} -> {tuned.colors:.2f})"
        )
    return lines


def model_adherence(
    comps: SDXLComponents, world: str, count: int, sampling: ShowcaseSampling, height: int = 64
) -> dict:
    """Prompt adherence of a model on ``count`` prompts of a synthetic world."""
    prompts = adherence_prompts(world, count)
    return prompt_adherence(sample(comps, prompts, sampling, height), prompts).summary()
