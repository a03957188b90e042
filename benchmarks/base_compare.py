"""Compare base-model candidates: prompt adherence on the base world and the held-out colour pairs, and a
picture of one held-out prompt per pair drawn by each.

    python benchmarks/base_compare.py committed=/root/.cache/ambient/tiny-sdxl-base-<hash> \\
        candidate=runs/base/ray/<run>/outputs/model --out docs/results/<name>

Writes <out>.json (adherence of each model, --prompts per world (64, as BASE.json), and what it drew
for every failed held-out background) and <out>.png (rows: the held-out pairs; columns: the models).
The sampling is the committed base's (full, 20 Euler steps, guidance 3, seed i for prompt i), so the
numbers compare with BASE.json's.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from ambient.core.sampling_spec import explicit_spec
from ambient.eval.adherence import adherence_prompts, parse_prompt, prompt_adherence, read_image
from ambient.eval.showcase import ShowcaseSampling, comparison_picture, sample
from ambient.models.loading import load_components
from ambient.models.vae import tensor_to_pil
from ambient.synthetic import HELD_OUT_PAIRS, SHAPES, caption_for

SAMPLING = ShowcaseSampling(explicit_spec("full", 0.0, steps=20, guidance=3.0))
PROMPTS = 64  # as BASE.json; more prompts narrow the standard error (about 0.05 at 64)


def picture_prompts() -> list[str]:
    """One held-out prompt per colour pair, the shapes taken in turn."""
    return [caption_for(fg, SHAPES[i % len(SHAPES)], bg) for i, (fg, bg) in enumerate(sorted(HELD_OUT_PAIRS))]


def evaluate(path: str, num_prompts: int) -> tuple[dict, list]:
    comps = load_components(path)
    numbers: dict = {}
    for world in ("base", "heldout"):
        prompts = adherence_prompts(world, num_prompts)
        images = sample(comps, prompts, SAMPLING, 64)
        numbers[world] = prompt_adherence(images, prompts).summary()
        if world == "heldout":
            wrong = Counter()
            for image, prompt in zip(images.permute(0, 2, 3, 1).numpy(), prompts, strict=True):
                asked, drawn = parse_prompt(prompt), read_image(image)
                if drawn.bg != asked.bg:
                    wrong[f"{asked.fg} on {asked.bg} -> {drawn.fg} on {drawn.bg}"] += 1
            numbers["heldout_wrong_backgrounds"] = dict(sorted(wrong.items()))
    tiles = tensor_to_pil(sample(comps, picture_prompts(), SAMPLING, 64))
    return numbers, tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=PATH of a diffusers folder")
    parser.add_argument("--out", required=True, help="path prefix of the .json and .png written")
    parser.add_argument("--prompts", type=int, default=PROMPTS, help="prompts per world")
    args = parser.parse_args()
    if args.prompts < 1:
        parser.error(f"--prompts must be at least 1, got {args.prompts}")
    models = dict(spec.split("=", 1) for spec in args.models)
    results, columns = {}, {}
    for name, path in models.items():
        results[name], columns[name] = evaluate(path, args.prompts)
        results[name]["path"], results[name]["prompts"] = path, args.prompts
        base, held = results[name]["base"]["adherence"], results[name]["heldout"]["adherence"]
        print(f"{name}: adherence base world {base:.3f}, held-out pairs {held:.3f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    comparison_picture(columns, picture_prompts(), None).save(out.with_suffix(".png"))
    print(out.with_suffix(".png"))


if __name__ == "__main__":
    main()
