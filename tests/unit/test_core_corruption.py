"""Frozen corruption: the same (id, seed) always gives the same noise; streams are independent."""

import pytest
import torch

from ambient import core


def test_frozen_noise_is_deterministic_per_id_and_independent_of_batch_order():
    a = core.frozen_noise(["a", "b", "c"], seed=7, shape=(4, 4))
    b = core.frozen_noise(["c", "a"], seed=7, shape=(4, 4))
    torch.testing.assert_close(a[0], b[1])
    torch.testing.assert_close(a[2], b[0])
    assert not torch.allclose(a[0], a[1])
    assert not torch.allclose(a[0], core.frozen_noise(["a"], seed=8, shape=(4, 4))[0])
    extra = core.frozen_noise(["a"], seed=7, shape=(4, 4), stream="extra")[0]
    assert not torch.allclose(a[0], extra)


def test_frozen_noise_is_standard_normal():
    z = core.frozen_noise(list(range(2000)), seed=0, shape=(16,))
    assert z.mean().item() == pytest.approx(0.0, abs=0.01)
    assert z.std().item() == pytest.approx(1.0, abs=0.01)


def test_corrupt_and_raise_noise_level():
    x0 = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    ids = [f"img{i}" for i in range(6)]
    y = core.corrupt(x0, 0.3, ids, seed=1)
    torch.testing.assert_close(y, core.corrupt(x0, 0.3, ids, seed=1))
    torch.testing.assert_close(y - x0, 0.3 * core.frozen_noise(ids, 1, (8,)))
    sigma_n = torch.tensor([0.3, 0.3, 0.3, 0.3, 0.3, 0.9])
    y2, level = core.raise_noise_level(y, sigma_n, 0.5, ids, seed=1)
    torch.testing.assert_close(level, torch.tensor([0.5] * 5 + [0.9]))
    torch.testing.assert_close(y2[5], y[5])  # already noisier than the target: untouched
    z_extra = core.frozen_noise(ids[:5], 1, (8,), stream="extra")
    torch.testing.assert_close(y2[:5], y[:5] + (0.5**2 - 0.3**2) ** 0.5 * z_extra)
    y3, _ = core.raise_noise_level(y, sigma_n, 0.5, ids, seed=1)
    torch.testing.assert_close(y2, y3)  # never fresh per epoch
    with pytest.raises(ValueError, match="5 ids for a batch of 6"):
        core.corrupt(x0, 0.3, ids[:5], seed=1)


def test_sliced_wasserstein_is_zero_for_equal_sets_and_matches_a_known_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g)
    assert core.sliced_wasserstein(a, a) == 0.0
    # Shifting every sample by v moves each 1-D projection by <v, dir>: SW2^2 = E[<v, dir>^2] = |v|^2 / d.
    v = torch.tensor([0.6, 0.0, 0.0])
    assert core.sliced_wasserstein(a, a + v, projections=4000) == pytest.approx(0.6 / 3**0.5, rel=0.05)
    with pytest.raises(ValueError, match="same shape"):
        core.sliced_wasserstein(a, a[:10])
