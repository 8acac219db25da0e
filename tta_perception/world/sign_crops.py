"""The classification task: traffic-sign crops with backgrounds from the driving scenes, lit and
weathered by the same renderer as the scenes (so a night or fog domain means the same thing)."""
from __future__ import annotations

import numpy as np

from .effects import compose
from .render import SURF_SPRITE, Buffers, Renderer, srgb_to_linear
from .signs import NUM_SIGNS, SIGN_NAMES, draw_sign
from .weather import WeatherParameters

CROP_SIZE = 64


def _resize_idx(n_out: int, lo: int, hi: int) -> np.ndarray:
    return np.clip(lo + ((np.arange(n_out) + 0.5) * (hi - lo) / n_out).astype(int), lo, hi - 1)


def _crop_buffers(buf: Buffers, rng: np.random.Generator, size: int) -> Buffers:
    """A random square window of a rendered scene, resampled (nearest) to ``size``."""
    H, W = buf.label.shape
    side = int(rng.integers(min(H, W) // 4, min(H, W) // 2 + 1))
    y0 = int(rng.integers(0, H - side + 1))
    x0 = int(rng.integers(0, W - side + 1))
    iy, ix = _resize_idx(size, y0, y0 + side), _resize_idx(size, x0, x0 + side)
    grid = np.ix_(iy, ix)
    scale = size / side
    return Buffers(buf.albedo[grid].copy(), buf.label[grid].copy(), buf.depth[grid].copy(),
                   buf.surface[grid].copy(), buf.emissive[grid].copy(), buf.glow[grid].copy(),
                   buf.ground_r[grid], buf.ground_z[grid], buf.lamps,
                   horizon=(buf.horizon - y0) * scale, focal=buf.focal * scale)


def render_sign_crops(n: int, weathers: list[WeatherParameters] | WeatherParameters, seed: int = 0,
                      size: int = CROP_SIZE, crops_per_scene: int = 16,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``n`` crops (n, size, size, 3) uint8 and their sign ids (n,) int64, balanced over sign types.

    Each crop: scene background window, a plate at a random scale/offset/distance, then lighting
    and weather. ``weathers`` is one weather or a list cycled over the crops.
    """
    if isinstance(weathers, WeatherParameters):
        weathers = [weathers]
    rng = np.random.default_rng([seed, 2024])
    images = np.empty((n, size, size, 3), np.uint8)
    labels = (np.arange(n) % NUM_SIGNS).astype(np.int64)
    rng.shuffle(labels)
    renderer = Renderer(seed=seed + 500, height=128, width=256)
    buf = None
    from tqdm.auto import tqdm

    for i in tqdm(range(n), desc="render sign crops", unit="crop", disable=not progress, mininterval=2.0):
        if i % crops_per_scene == 0:
            renderer = Renderer(seed=int(rng.integers(1 << 30)), height=128, width=256)
            buf = renderer.render(float(rng.uniform(0, 600)))
        assert buf is not None
        crop = _crop_buffers(buf, rng, size)
        # the crop shows a far background: only the (retro-reflective) plate catches the headlights
        np.maximum(crop.depth, 45.0, out=crop.depth)
        plate = int(size * rng.uniform(0.55, 0.85))
        oy = int(rng.integers(0, size - plate + 1))
        ox = int(rng.integers(0, size - plate + 1))
        alpha, col = draw_sign(int(labels[i]), plate)
        dist = float(rng.uniform(6, 35))
        sl = (slice(oy, oy + plate), slice(ox, ox + plate))
        m = alpha > 0.5
        a = alpha[..., None]
        crop.albedo[sl] = crop.albedo[sl] * (1 - a) + srgb_to_linear(col * rng.uniform(0.8, 1.1)) * a
        crop.depth[sl][m] = np.minimum(crop.depth[sl][m], dist)
        crop.surface[sl][m] = SURF_SPRITE
        crop.emissive[sl][m] = 0.0
        weather = weathers[i % len(weathers)]
        images[i] = compose(crop, weather, frame=int(rng.integers(1 << 20)), noise_seed=seed)
    return images, labels


__all__ = ["CROP_SIZE", "NUM_SIGNS", "SIGN_NAMES", "render_sign_crops"]
