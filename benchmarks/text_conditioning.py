"""What the caption gives the UNet: how distinct the tiny model's text embeddings are per caption role.

For every caption of the shape world ("a {fg} {shape} on a {bg} background", all ordered colour pairs x
the base shapes), through the model's own two text encoders (``encode_prompts``, as in training):

- cosine similarity of the pooled embedding (SDXL's ``text_embeds``, added to the time embedding) and of
  the sequence embedding (first 12 tokens) between a caption and its colour-swapped twin, and between a
  caption and one with another background colour;
- a linear probe per token position: ridge regression from that token's embedding to the foreground and
  to the background colour, fitted on half of the captions and scored on the other half.

A token that identifies a colour (probe accuracy 1.0) gives the UNet's cross-attention what it needs to
draw it; pooled embeddings that are nearly equal for every caption (cosine ~1) give it nothing.

    python benchmarks/text_conditioning.py [--model PATH] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from ambient.models import load_components  # noqa: E402
from ambient.models.base_model import ensure_default_model  # noqa: E402
from ambient.models.conditioning import encode_prompts  # noqa: E402
from ambient.synthetic import COLORS, SHAPES, caption_for  # noqa: E402

FG_POSITION, BG_POSITION = 2, 6  # <start> a {fg} {shape} on a {bg} background <end>


def mean_cosine(emb: torch.Tensor, pairs: list[tuple[int, int]]) -> float:
    unit = torch.nn.functional.normalize(emb.flatten(1), dim=-1)
    return float(sum((unit[i] @ unit[j]).item() for i, j in pairs) / len(pairs))


def probe_accuracy(features: np.ndarray, labels: np.ndarray, classes: int, seed: int = 0) -> float:
    """Ridge regression onto one-hot labels, fitted on a random half, accuracy on the other half."""
    order = np.random.default_rng(seed).permutation(len(labels))
    train, test = order[: len(order) // 2], order[len(order) // 2 :]
    x = np.c_[features, np.ones(len(features))]
    targets = np.eye(classes)[labels]
    gram = x[train].T @ x[train] + 1e-3 * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, x[train].T @ targets[train])
    return float((np.argmax(x[test] @ weights, axis=1) == labels[test]).mean())


def measure(model: Path) -> dict:
    comps = load_components(model)
    colours = sorted(COLORS)
    rows = [(fg, shape, bg) for fg, bg in itertools.permutations(colours, 2) for shape in SHAPES]
    index = {row: i for i, row in enumerate(rows)}
    with torch.no_grad():
        sequence, pooled = encode_prompts(
            [comps.tokenizer, comps.tokenizer_2],
            [comps.text_encoder, comps.text_encoder_2],
            [caption_for(*row) for row in rows],
        )
    swapped = [(index[(f, s, b)], index[(b, s, f)]) for f, s, b in rows]
    other_bg = [(index[(f, s, b)], index[(f, s, c)]) for f, s, b in rows for c in colours if c not in (f, b)]
    fg_labels = np.array([colours.index(r[0]) for r in rows])
    bg_labels = np.array([colours.index(r[2]) for r in rows])
    probes = {
        f"token {pos}": {
            "fg": probe_accuracy(sequence[:, pos].numpy(), fg_labels, len(colours)),
            "bg": probe_accuracy(sequence[:, pos].numpy(), bg_labels, len(colours)),
        }
        for pos in range(1, 9)
    }
    return {
        "model": str(model),
        "captions": len(rows),
        "pooled_cosine": {"swapped": mean_cosine(pooled, swapped), "other_bg": mean_cosine(pooled, other_bg)},
        "sequence_cosine": {
            "swapped": mean_cosine(sequence[:, :12], swapped),
            "other_bg": mean_cosine(sequence[:, :12], other_bg),
        },
        "probe_accuracy": probes,
        "chance": 1 / len(colours),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a diffusers SDXL folder (default: the committed base)")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    result = measure(args.model or ensure_default_model())
    pooled, seq = result["pooled_cosine"], result["sequence_cosine"]
    print(
        f"pooled   cosine: colour-swapped twin {pooled['swapped']:.3f}, other background {pooled['other_bg']:.3f}"
    )
    print(
        f"sequence cosine: colour-swapped twin {seq['swapped']:.3f}, other background {seq['other_bg']:.3f}"
    )
    print(f"linear probe accuracy per token (chance {result['chance']:.2f}):")
    for name, acc in result["probe_accuracy"].items():
        print(f"  {name}: foreground {acc['fg']:.2f}  background {acc['bg']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
