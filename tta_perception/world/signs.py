"""Traffic-sign plates: drawn procedurally, used both in the driving scenes and for the
classification task (sign crops with scene backgrounds, under the same weather)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

SIGN_NAMES: tuple[str, ...] = (
    "stop", "yield", "no_entry", "speed_30", "speed_50", "speed_80", "warning",
    "pedestrian_crossing", "keep_right", "ahead_only", "priority_road", "no_parking",
)
NUM_SIGNS = len(SIGN_NAMES)

RED = np.array((0.8, 0.06, 0.08), np.float32)
WHITE = np.array((0.93, 0.93, 0.93), np.float32)
BLUE = np.array((0.05, 0.25, 0.7), np.float32)
BLACK = np.array((0.05, 0.05, 0.05), np.float32)
YELLOW = np.array((0.95, 0.75, 0.05), np.float32)

_DIGITS = {  # 3x5 bitmap font
    "0": ("111", "101", "101", "101", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "5": ("111", "100", "111", "001", "111"),
    "8": ("111", "101", "111", "101", "111"),
}


def _text_mask(u: np.ndarray, v: np.ndarray, text: str, height: float) -> np.ndarray:
    """Mask of ``text`` (bitmap digits) centred at the origin, ``height`` in plate units."""
    cell = height / 5.0
    total_w = cell * (4 * len(text) - 1)
    col = np.floor((u + total_w / 2) / cell).astype(int)
    row = np.floor((v + height / 2) / cell).astype(int)
    mask = np.zeros(u.shape, bool)
    for i, ch in enumerate(text):
        glyph = np.array([[c == "1" for c in line] for line in _DIGITS[ch]])
        c = col - 4 * i
        inside = (c >= 0) & (c < 3) & (row >= 0) & (row < 5)
        mask |= inside & glyph[row.clip(0, 4), c.clip(0, 2)]
    return mask


def _shapes(u: np.ndarray, v: np.ndarray):
    au, av = np.abs(u), np.abs(v)
    circle = np.hypot(u, v)
    octagon = np.maximum(np.maximum(au, av), (au + av) / np.sqrt(2) * 1.08)
    tri_up = np.maximum(v - 0.8, (au * 1.7 - (v + 0.9)) / 1.7 + 0.0)  # <=0 inside
    tri_down = np.maximum(-v - 0.8, (au * 1.7 - (-v + 0.9)) / 1.7)
    diamond = au + av
    square = np.maximum(au, av)
    return circle, octagon, tri_up, tri_down, diamond, square


@lru_cache(maxsize=256)
def draw_sign(sign: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Plate ``sign`` at ``size``×``size`` pixels: (alpha (s, s) in [0, 1], colour (s, s, 3) sRGB).

    Drawn at 3× and averaged down so small far-away plates stay anti-aliased.
    """
    if not 0 <= sign < NUM_SIGNS:
        raise ValueError(f"sign type {sign} outside 0..{NUM_SIGNS - 1}")
    ss = 3
    n = max(int(size), 1) * ss
    g = (np.arange(n) + 0.5) / n * 2 - 1
    v, u = np.meshgrid(g, g, indexing="ij")
    circle, octagon, tri_up, tri_down, diamond, square = _shapes(u, v)
    au, av = np.abs(u), np.abs(v)
    rgb = np.zeros((n, n, 3), np.float32)
    name = SIGN_NAMES[sign]

    def paint(mask, color):
        rgb[mask] = color

    if name == "stop":
        alpha = octagon < 0.98
        paint(alpha, WHITE)
        paint(octagon < 0.88, RED)
        for k in range(4):  # four white "letters"
            x0 = -0.62 + k * 0.32
            paint((u > x0) & (u < x0 + 0.22) & (av < 0.2), WHITE)
    elif name == "yield":
        alpha = tri_down < 0.02
        paint(alpha, RED)
        paint(tri_down < -0.16, WHITE)
    elif name == "no_entry":
        alpha = circle < 0.98
        paint(alpha, RED)
        paint((au < 0.62) & (av < 0.17), WHITE)
    elif name.startswith("speed_"):
        alpha = circle < 0.98
        paint(alpha, RED)
        paint(circle < 0.76, WHITE)
        paint(_text_mask(u, v, name.split("_")[1], 0.75), BLACK)
    elif name == "warning":
        alpha = tri_up < 0.02
        paint(alpha, RED)
        paint(tri_up < -0.16, WHITE)
        paint((au < 0.07) & (v > -0.3) & (v < 0.3), BLACK)
        paint((au < 0.07) & (v > 0.4) & (v < 0.55), BLACK)
    elif name == "pedestrian_crossing":
        alpha = square < 0.95
        paint(alpha, BLUE)
        tri = np.maximum(v - 0.6, (au * 1.6 - (v + 0.75)) / 1.6)
        paint(tri < 0, WHITE)
        paint((np.hypot(u, v + 0.25) < 0.1) | ((au < 0.06) & (v > -0.15) & (v < 0.4)), BLACK)
    elif name == "keep_right":
        alpha = circle < 0.98
        paint(alpha, BLUE)
        d = (u - v) / np.sqrt(2)  # along the arrow (pointing down-right)
        e = (u + v) / np.sqrt(2)
        paint(((np.abs(e) < 0.12) & (d > -0.55) & (d < 0.2)) | ((d > 0.1) & (d < 0.6) & (np.abs(e) < 0.6 - d)),
              WHITE)
    elif name == "ahead_only":
        alpha = circle < 0.98
        paint(alpha, BLUE)
        paint(((au < 0.12) & (v > -0.2) & (v < 0.65)) | ((v > -0.7) & (v < -0.15) & (au < (v + 0.7) * 0.9)),
              WHITE)
    elif name == "priority_road":
        alpha = diamond < 0.98
        paint(alpha, WHITE)
        paint(diamond < 0.62, YELLOW)
    elif name == "no_parking":
        alpha = circle < 0.98
        paint(alpha, RED)
        paint(circle < 0.76, BLUE)
        paint((np.abs(u + v) / np.sqrt(2) < 0.1) & (circle < 0.76), RED)
    else:  # pragma: no cover - SIGN_NAMES and the branches are kept in sync by the tests
        raise AssertionError(name)
    a = alpha.astype(np.float32).reshape(size, ss, size, ss).mean(axis=(1, 3))
    c = (rgb * alpha[..., None]).reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
    c = c / np.maximum(a[..., None], 1e-6)
    return a, c
