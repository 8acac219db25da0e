"""Lighting, weather and sensor model: turns geometry buffers into a camera image.

Physically motivated, cheap enough for >100 frames/s at 128×256 on one core:
- sun and sky light from ``sun_altitude_angle`` / ``cloudiness`` (warm, weak light at low sun);
  below the horizon only ambient, the car's headlights, street lamps and lit windows remain;
- fog: Koschmieder attenuation ``T = exp(-β·max(0, d - fog_distance))``, β from ``fog_density``,
  so contrast falls with depth; rain adds its own haze and streaks slanted by ``wind_intensity``;
- wet roads (``precipitation_deposits``, rain) darken and mirror the scene and the lights;
- ``wetness`` puts water drops on the lens (local blur);
- auto-exposure with limited gain, then read and shot noise that grow with the gain (night grain).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.ndimage import uniform_filter

from .render import FAR, SURF_FACADE_L, SURF_FACADE_R, SURF_GROUND, SURF_SKY, SURF_SPRITE, Buffers
from .weather import WeatherParameters


def _smoothstep(a: float, b: float, x: float) -> float:
    s = min(max((x - a) / (b - a), 0.0), 1.0)
    return s * s * (3 - 2 * s)


def box_blur(img: np.ndarray, radius: int) -> np.ndarray:
    """Box blur over the two image axes (edges replicated)."""
    if radius <= 0:
        return img
    size = (2 * radius + 1, 2 * radius + 1) + (1,) * (img.ndim - 2)
    return uniform_filter(img, size=size, mode="nearest")


@lru_cache(maxsize=8)
def _cloud_pattern(h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return (np.sin(xs / w * 9.0) * np.sin(ys / h * 13.0 + xs / w * 4.0)).astype(np.float32)


@lru_cache(maxsize=16)
def _rain_bank(h: int, w: int, slant_q: int, count: int = 4):
    """``count`` rain layers: streak intensity and a per-streak rank (a streak shows if rank < rate)."""
    rng = np.random.default_rng([h, w, slant_q])
    slant = slant_q / 10.0
    layers = []
    n = int(h * w / 30)
    length = max(4, h // 12)
    for _ in range(count):
        val = np.zeros((h, w), np.float32)
        rank = np.ones((h, w), np.float32)
        y0 = rng.integers(-length, h, n)
        x0 = rng.integers(0, w, n)
        rk = rng.random(n).astype(np.float32)
        a = rng.uniform(0.4, 1.0, n).astype(np.float32)
        ln = rng.integers(length // 2, length + 1, n)
        for k in range(length):
            ys = y0 + k
            xs = (x0 + np.round(k * slant)).astype(int) % w
            ok = (ys >= 0) & (ys < h) & (k < ln)
            val[ys[ok], xs[ok]] = np.maximum(val[ys[ok], xs[ok]], a[ok])
            rank[ys[ok], xs[ok]] = np.minimum(rank[ys[ok], xs[ok]], rk[ok])
        layers.append((val, rank))
    return layers


@lru_cache(maxsize=8)
def _drops(h: int, w: int, count: int = 4):
    """Lens water-drop masks (soft discs), one per frame phase."""
    rng = np.random.default_rng([h, w, 99])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(count):
        m = np.zeros((h, w), np.float32)
        for _ in range(14):
            cy, cx, rad = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(h * 0.04, h * 0.12)
            m = np.maximum(m, np.clip(1.3 - np.hypot(yy - cy, xx - cx) / rad, 0, 1))
        out.append(np.clip(m, 0, 1))
    return out


def compose(buf: Buffers, wx: WeatherParameters, frame: int = 0, noise_seed: int = 0) -> np.ndarray:
    """Image (H, W, 3) uint8 of ``buf`` under weather ``wx``; deterministic in ``(frame, noise_seed)``."""
    H, W = buf.label.shape
    rng = np.random.default_rng([noise_seed, frame, 4242])
    alt = wx.sun_altitude_angle
    cloud = wx.cloudiness / 100.0
    rain = wx.precipitation / 100.0
    day = _smoothstep(-8.0, 12.0, alt)
    sun_e = day * max(np.sin(np.radians(max(alt, 0.0))), 0.12) * (1.0 - 0.8 * cloud) * (1.0 - 0.5 * rain)
    amb_e = 0.015 + day * (0.28 + 0.1 * cloud) * (1.0 - 0.35 * rain)
    warm = _smoothstep(3.0, 35.0, alt)
    sun_col = np.array((1.0, 0.5 + 0.48 * warm, 0.25 + 0.7 * warm), np.float32)
    amb_col = np.array((0.85 + 0.1 * (1 - warm), 0.88, 1.0 - 0.2 * (1 - warm)), np.float32) * (1 - cloud * 0.1)

    surf = buf.surface
    irr = np.empty((H, W, 3), np.float32)
    irr[...] = amb_col * amb_e
    az = np.radians(wx.sun_azimuth_angle)
    cos_alt = np.cos(np.radians(max(alt, 0.0)))
    facing = {SURF_GROUND: 1.0, SURF_SPRITE: 0.75,
              SURF_FACADE_L: 0.35 + 0.65 * max(np.cos(az), 0.0) * cos_alt,
              SURF_FACADE_R: 0.35 + 0.65 * max(-np.cos(az), 0.0) * cos_alt}
    lut = np.zeros(8, np.float32)
    for s, k in facing.items():
        lut[s] = k
    shade = lut[surf]
    irr += (sun_e * 1.6) * shade[..., None] * sun_col

    # artificial light: headlights (always on; visible at dusk/night) and street lamps at night
    night = 1.0 - day
    Z = buf.depth
    if night > 0.01:
        u = (np.arange(W, dtype=np.float32) + 0.5 - W / 2) / buf.focal
        x_cam = np.abs(u[None, :] * Z)
        cone = np.clip(1.0 - x_cam / (1.2 + 0.35 * Z), 0, 1)
        head = 2.5 * cone * 40.0 / (Z * Z + 40.0) * (surf != SURF_SKY)
        if not getattr(buf, "headlights", True):  # a rear camera: the car's tail lights, dim and red
            head = head * 0.25
        lamp_light = np.zeros((H, W), np.float32)
        g = surf == SURF_GROUND
        for lr, lz in buf.lamps:
            d2 = (buf.ground_r[g] - lr) ** 2 + (buf.ground_z[g] - lz) ** 2
            lamp_light[g] += 1.4 * np.exp(-d2 / (2 * 5.0 ** 2))
        colour = np.array((1.0, 0.9, 0.7) if getattr(buf, "headlights", True) else (1.0, 0.15, 0.08), np.float32)
        irr += (night * head)[..., None] * colour + (night * lamp_light)[..., None] * np.array((1.0, 0.9, 0.7), np.float32)

    wet = max(wx.precipitation_deposits / 100.0, 0.7 * rain, 0.3 * wx.wetness / 100.0)
    albedo = buf.albedo
    ground = surf == SURF_GROUND
    if wet > 0:
        albedo = albedo.copy()
        albedo[ground] *= 1.0 - 0.45 * wet
    img = albedo * irr + buf.emissive * (night * 1.0) + buf.glow

    # sky radiance
    sky = surf == SURF_SKY
    rows = (np.arange(H, dtype=np.float32) + 0.5) / max(buf.horizon, 1.0)
    zen = np.array((0.12, 0.28, 0.75), np.float32)
    hor = np.array((0.55, 0.68, 0.9), np.float32) * (0.3 + 0.7 * warm) + (1 - warm) * np.array((0.8, 0.4, 0.12), np.float32)
    grad = np.clip(rows, 0, 1)[:, None]
    sky_day = (zen[None, :] * (1 - grad) + hor[None, :] * grad)
    grey = np.array((0.6, 0.62, 0.66), np.float32)
    sky_col = sky_day * (1 - 0.85 * cloud) + grey * 0.85 * cloud
    sky_col = sky_col.astype(np.float32) * (0.02 + 0.98 * day) * (1.0 - 0.45 * rain) + (1 - day) * np.array((0.004, 0.006, 0.015), np.float32)
    sky_img = np.broadcast_to(sky_col[:, None, :], (H, W, 3))
    if cloud > 0.05:
        sky_img = sky_img * (1 + 0.25 * cloud * day * _cloud_pattern(H, W)[..., None])
    img[sky] = sky_img[sky]

    # wet road mirrors what is above the horizon (and the lights)
    if wet > 0:
        yh = int(round(buf.horizon))
        src = np.clip(2 * yh - np.arange(H), 0, H - 1)
        refl = box_blur(img[src], 1)
        puddle = np.clip(wx.precipitation_deposits / 100.0 * 1.3 - 0.3, 0, 1)
        k = np.float32(0.25 * wet + 0.45 * puddle) * ground.astype(np.float32)
        img = img * (1 - k[..., None] * 0.5) + refl * k[..., None]

    # fog and rain haze (attenuation with depth)
    beta = 0.085 * wx.fog_density / 100.0
    beta_rain = 0.012 * rain
    d_eff = np.maximum(Z - wx.fog_distance, 0.0)
    trans = np.exp(-beta * d_eff - beta_rain * Z - 0.002 * Z).astype(np.float32)
    trans[sky] = np.exp(-beta * max(FAR - wx.fog_distance, 0) - beta_rain * FAR)
    fog_col = (amb_e * 1.2 + sun_e * 0.9) * np.array((0.78, 0.8, 0.84), np.float32) + 0.004
    img = img * trans[..., None] + fog_col * (1.0 - trans[..., None])

    # rain streaks, slanted by the wind, lit by the scene
    if rain > 0.01:
        val, rank = _rain_bank(H, W, int(round(wx.wind_intensity / 100.0 * 6)))[frame % 4]
        shift = (frame * 7) % H
        streak = np.roll(val * (rank < rain), shift, axis=0)
        lum = box_blur(img.mean(axis=2), 3)
        img = img + (0.03 + 0.35 * lum)[..., None] * streak[..., None] * 0.5
        img = box_blur(img, 1) * rain * 0.5 + img * (1 - rain * 0.5)

    # water drops on the lens
    if wx.wetness > 1:
        drop = _drops(H, W)[(frame // 5) % 4] * (wx.wetness / 100.0)
        img = img * (1 - drop[..., None]) + box_blur(img, max(H // 40, 2)) * drop[..., None]

    # auto exposure with limited gain, sensor noise growing with the gain
    mean = float(img.mean())
    gain = float(np.clip((0.18 / max(mean, 1e-4)) ** 0.6, 0.6, 8.0))
    img = img * gain
    sigma = 0.001 + 0.003 * gain
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * (
        sigma + 0.004 * np.sqrt(np.maximum(img, 0)) * gain)
    idx = (np.clip(img, 0, 1) * (_GAMMA_LUT.size - 1)).astype(np.int32)
    return _GAMMA_LUT[idx]


# linear light -> 8-bit sRGB-ish (gamma 2.2), via a lookup table: much faster than np.power
_GAMMA_LUT = (np.power(np.linspace(0, 1, 4096), 1 / 2.2) * 255 + 0.5).astype(np.uint8)
