"""Rehearsal data without preparing any: which rows come from the replay world, and the partial
captions. Prepared datasets with replay rows are in tests/integration/test_replay_mix.py."""

from __future__ import annotations

from ambient.synthetic import has_partial_caption, is_replay, partial_caption, render_synthetic, world_of_id


def test_replay_share_spacing():
    assert [i for i in range(12) if is_replay(i, 0.25)] == [3, 7, 11]
    assert sum(is_replay(i, 0.1) for i in range(100)) == 10
    assert not any(is_replay(i, 0.0) for i in range(10))
    assert world_of_id("synthetic-3-000001") == "shapes" and world_of_id("abc") is None
    assert world_of_id("synthetic-nosuchworld-0-000001") is None


def test_partial_captions_say_only_what_the_image_shows():
    share = [has_partial_caption(7, i, 0.5) for i in range(2000)]
    assert 0.45 < sum(share) / len(share) < 0.55
    assert not any(has_partial_caption(7, i, 0.0) for i in range(100))
    forms = {"foreground": 0, "background": 0, "background_only": 0}
    for i in range(300):
        it = render_synthetic(i, 7, 16, "base")
        caption = partial_caption(it, 7, i)
        assert caption != it.caption and caption == partial_caption(it, 7, i)  # deterministic
        words = caption.split()
        if words[-1] != "background":
            assert caption == f"a {it.fg} {it.shape}"
            forms["foreground"] += 1
        elif it.shape in words:
            assert words[1] == it.shape and words[-2] == it.bg and it.fg not in words
            forms["background"] += 1
        else:
            assert words[1:] == [it.bg, "background"]
            forms["background_only"] += 1
    assert min(forms.values()) > 60  # each form about a third
