"""The prompt-adherence metric reads colours and shapes back from rendered images."""

from __future__ import annotations

import numpy as np
import pytest

from ambient.eval.adherence import parse_prompt, prompt_adherence, read_image
from ambient.synthetic import synthetic_items


@pytest.mark.parametrize("world", ["shapes", "heldout", "cross", "star"])
def test_ground_truth_renders_score_near_one(world: str) -> None:
    items = list(synthetic_items(60, seed=3, world=world))
    score = prompt_adherence([it.image for it in items], [it.caption for it in items])
    assert score.adherence >= 0.98 and score.all >= 0.95, score


def test_every_attribute_is_read() -> None:
    for item in synthetic_items(40, seed=5, world="shapes"):
        reading = read_image(np.asarray(item.image))
        assert (reading.bg, reading.fg, reading.shape) == (item.bg, item.fg, item.shape), item.caption


def test_noise_scores_near_chance() -> None:
    items = list(synthetic_items(200, seed=3))
    noise = np.random.default_rng(0).integers(0, 256, (200, 64, 64, 3), dtype=np.uint8)
    score = prompt_adherence(noise, [it.caption for it in items])
    assert score.adherence < 0.25 and score.all < 0.05, score


def test_wrong_prompts_score_low() -> None:
    # The right pictures under shuffled captions: a metric that ignored the prompt would still say 1.
    items = list(synthetic_items(100, seed=4))
    captions = [it.caption for it in items]
    shifted = captions[1:] + captions[:1]
    assert prompt_adherence([it.image for it in items], shifted).adherence < 0.4


def test_blank_image_has_no_foreground_and_tensor_layout_is_accepted() -> None:
    blank = np.zeros((1, 3, 32, 32), dtype=np.uint8)  # (N, 3, H, W), all black
    score = prompt_adherence(blank, ["a red circle on a black background"])
    assert (score.background, score.foreground, score.shape) == (1.0, 0.0, 0.0)


def test_prompts_outside_the_world_are_refused() -> None:
    assert parse_prompt("an orange star on a white background").shape == "star"  # type: ignore[union-attr]
    assert parse_prompt("a photo of a cat") is None
    with pytest.raises(ValueError, match="not a synthetic-world prompt"):
        prompt_adherence(np.zeros((1, 8, 8, 3), dtype=np.uint8), ["a photo of a cat"])
