"""Classification world: sign plates, crops under weather, the 15 ImageNet-C corruptions."""
from __future__ import annotations

import numpy as np
import pytest

from tta_perception.world.corruptions import CORRUPTIONS, corrupt_images
from tta_perception.world.sign_crops import render_sign_crops
from tta_perception.world.signs import NUM_SIGNS, draw_sign
from tta_perception.world.weather import preset


def test_every_sign_draws_distinctly():
    plates = []
    for s in range(NUM_SIGNS):
        alpha, col = draw_sign(s, 24)
        assert alpha.shape == (24, 24) and col.shape == (24, 24, 3)
        assert 0.3 < alpha.mean() < 1.0
        plates.append((col * alpha[..., None]).ravel())
    plates = np.stack(plates)
    dist = np.abs(plates[:, None] - plates[None]).mean(-1)
    assert dist[~np.eye(NUM_SIGNS, dtype=bool)].min() > 0.004  # speed limits differ only in digits
    with pytest.raises(ValueError):
        draw_sign(NUM_SIGNS, 10)


def test_sign_crops_balanced_deterministic_and_weathered():
    x, y = render_sign_crops(24, preset("ClearNoon"), seed=3)
    x2, y2 = render_sign_crops(24, preset("ClearNoon"), seed=3)
    assert x.shape == (24, 64, 64, 3) and x.dtype == np.uint8
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert np.bincount(y, minlength=NUM_SIGNS).tolist() == [2] * NUM_SIGNS
    xn, yn = render_sign_crops(24, preset("ClearNight"), seed=3)
    assert np.array_equal(y, yn) and xn.mean() < x.mean()


def test_fifteen_corruptions_in_standard_order_and_seeded():
    assert CORRUPTIONS[0] == "gaussian_noise" and CORRUPTIONS[-1] == "jpeg_compression" and len(CORRUPTIONS) == 15
    x, _ = render_sign_crops(2, preset("ClearNoon"), seed=1)
    state = np.random.get_state()
    for c in CORRUPTIONS:
        a = corrupt_images(x, c, 5, seed=0)
        assert a.shape == x.shape and a.dtype == np.uint8
        assert not np.array_equal(a, x), c
        assert np.array_equal(a, corrupt_images(x, c, 5, seed=0)), c
    assert np.array_equal(state[1], np.random.get_state()[1])  # global RNG left as it was
    mild = np.abs(corrupt_images(x, "gaussian_noise", 1).astype(int) - x).mean()
    harsh = np.abs(corrupt_images(x, "gaussian_noise", 5).astype(int) - x).mean()
    assert harsh > mild
    with pytest.raises(ValueError):
        corrupt_images(x, "snowfall", 3)
    with pytest.raises(ValueError):
        corrupt_images(x, "fog", 6)
