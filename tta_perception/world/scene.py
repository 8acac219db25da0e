"""Procedural road world: an endless curved two-lane road with sidewalks, facades, trees, street
lamps, signs, parked and moving vehicles and walking pedestrians.

Everything is a pure function of ``(seed, chunk index)``: the road is cut into 20 m chunks, each
filled from its own RNG, so any position along the drive is reproducible without rendering what came
before, and consecutive frames see the same objects move past like a real drive.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

CHUNK = 20.0  # metres of road per procedural chunk

# sRGB-ish base colours; converted to linear light by the renderer.
BUILDING_COLORS = np.array([
    (0.62, 0.55, 0.47), (0.55, 0.30, 0.24), (0.70, 0.68, 0.62), (0.45, 0.45, 0.47), (0.80, 0.74, 0.60),
    (0.50, 0.42, 0.36), (0.66, 0.60, 0.70), (0.38, 0.40, 0.36), (0.78, 0.78, 0.76), (0.60, 0.50, 0.30),
], dtype=np.float32)
VEHICLE_COLORS = np.array([
    (0.75, 0.08, 0.08), (0.1, 0.15, 0.55), (0.85, 0.85, 0.85), (0.1, 0.1, 0.1), (0.55, 0.55, 0.58),
    (0.2, 0.45, 0.2), (0.9, 0.75, 0.1), (0.35, 0.2, 0.1), (0.15, 0.35, 0.6), (0.6, 0.6, 0.2),
], dtype=np.float32)
CLOTH_COLORS = np.array([
    (0.15, 0.15, 0.2), (0.6, 0.1, 0.1), (0.1, 0.3, 0.6), (0.8, 0.8, 0.75), (0.3, 0.5, 0.25),
    (0.5, 0.4, 0.3), (0.9, 0.6, 0.2), (0.4, 0.2, 0.45),
], dtype=np.float32)


@dataclass(frozen=True)
class Layout:
    """Per-seed constants of the road."""

    road_half: float        # half width of the two-lane road (m)
    sidewalk: float         # sidewalk width (m)
    setback: tuple[float, float]  # lateral distance of the facade line, left and right (m)
    curve: tuple[float, ...]  # amplitudes, wavelengths and phases of the road centre line
    camera_height: float = 1.6

    @property
    def lane_offset(self) -> float:
        """The ego car drives in the right lane."""
        return self.road_half / 2.0


def make_layout(seed: int) -> Layout:
    rng = np.random.default_rng([seed, 7919])
    road_half = float(rng.uniform(3.3, 4.2))
    sidewalk = float(rng.uniform(2.2, 3.6))
    setback = tuple(float(road_half + sidewalk + rng.uniform(0.3, 3.0)) for _ in range(2))
    curve = (float(rng.uniform(4, 12)), float(rng.uniform(70, 150)), float(rng.uniform(0, 6.3)),
             float(rng.uniform(1, 3)), float(rng.uniform(25, 45)), float(rng.uniform(0, 6.3)))
    return Layout(road_half, sidewalk, setback, curve)


def road_centre(layout: Layout, z: np.ndarray | float) -> np.ndarray:
    """Lateral position of the road centre line at distance ``z`` along the road."""
    a1, l1, p1, a2, l2, p2 = layout.curve
    z = np.asarray(z, dtype=np.float64)
    return a1 * np.sin(z / l1 + p1) + a2 * np.sin(z / l2 + p2)


@dataclass
class Segments:
    """Facade / hedge / gap segments of one road side, sorted by start."""

    start: np.ndarray   # (N,) z where the segment starts
    kind: np.ndarray    # (N,) 0 gap, 1 building, 2 vegetation (hedge / row of trees)
    height: np.ndarray  # (N,) metres
    color: np.ndarray   # (N, 3)
    fence: np.ndarray   # (N,) bool: a fence runs along the sidewalk in front of this segment
    window: np.ndarray  # (N, 2) window spacing along the road and per storey (m)


# Object kinds drawn as camera-facing sprites.
OBJ_VEHICLE, OBJ_PEDESTRIAN, OBJ_LAMP, OBJ_SIGN, OBJ_TREE = range(5)


@dataclass
class Objects:
    """Sprites of one chunk; ``z`` is the position at t=0, ``v`` the speed along the road."""

    kind: np.ndarray     # (N,)
    r: np.ndarray        # (N,) lateral position relative to the road centre (m, + = right)
    z: np.ndarray        # (N,)
    v: np.ndarray        # (N,) m/s along +z
    width: np.ndarray    # (N,)
    height: np.ndarray   # (N,)
    color: np.ndarray    # (N, 3)
    color2: np.ndarray   # (N, 3) second colour (trousers, cabin, crown shade)
    sub: np.ndarray      # (N,) subtype: sign type, vehicle facing (0 rear, 1 front), ...
    phase: np.ndarray    # (N,) animation phase


def _side_segments(rng: np.random.Generator, z0: float) -> tuple[list, ...]:
    starts, kinds, heights, colors, fences, windows = [], [], [], [], [], []
    z = z0
    while z < z0 + CHUNK:
        kind = int(rng.choice(3, p=(0.2, 0.6, 0.2)))
        starts.append(z)
        kinds.append(kind)
        heights.append(rng.uniform(7, 22) if kind == 1 else rng.uniform(3, 7))
        colors.append(BUILDING_COLORS[rng.integers(len(BUILDING_COLORS))] * rng.uniform(0.85, 1.1)
                      if kind == 1 else np.array((0.18, 0.32, 0.1)) * rng.uniform(0.7, 1.2))
        fences.append(kind != 1 and rng.random() < 0.6)
        windows.append((rng.uniform(2.5, 4.0), rng.uniform(2.8, 3.6)))
        z += rng.uniform(6, 18)
    return starts, kinds, heights, colors, fences, windows


@lru_cache(maxsize=4096)
def chunk_content(seed: int, index: int, layout: Layout) -> tuple[Segments, Segments, Objects]:
    """Left segments, right segments and sprites of chunk ``index`` (cached: pure function)."""
    rng = np.random.default_rng([seed, index + (1 << 30), 31337])  # SeedSequence wants >= 0
    z0 = index * CHUNK
    sides = []
    for _ in range(2):
        s = _side_segments(rng, z0)
        sides.append(Segments(np.array(s[0]), np.array(s[1]), np.array(s[2], dtype=np.float32),
                              np.array(s[3], dtype=np.float32).clip(0, 1), np.array(s[4], dtype=bool),
                              np.array(s[5], dtype=np.float32)))
    rh, sw = layout.road_half, layout.sidewalk
    rows = []  # (kind, r, z, v, w, h, color, color2, sub, phase)

    def add(kind, r, z, v, w, h, c, c2, sub=0, phase=0.0):
        rows.append((kind, r, z, v, w, h, c, c2, sub, phase))

    # Street lamps every 25 m, alternating sides, at the kerb.
    for k in range(int(np.floor(z0 / 25)), int(np.floor((z0 + CHUNK) / 25)) + 1):
        zl = k * 25.0
        if z0 <= zl < z0 + CHUNK:
            side = 1 if k % 2 == 0 else -1
            add(OBJ_LAMP, side * (rh + 0.45), zl, 0.0, 0.28, rng.uniform(6.5, 8.0), (0.45, 0.46, 0.48),
                (0.9, 0.85, 0.6))
    # Traffic signs (the classification task's sign types), facing the camera.
    for _ in range(rng.binomial(2, 0.45)):
        side = 1 if rng.random() < 0.75 else -1
        add(OBJ_SIGN, side * (rh + rng.uniform(0.5, 1.0)), z0 + rng.uniform(0, CHUNK), 0.0,
            rng.uniform(0.8, 1.0), rng.uniform(2.6, 3.1), (0.5, 0.5, 0.52), (0, 0, 0), int(rng.integers(12)))
    # Trees between sidewalk and facades.
    for _ in range(rng.integers(0, 3)):
        side = 1 if rng.random() < 0.5 else -1
        add(OBJ_TREE, side * (rh + sw + rng.uniform(0.3, 1.5)), z0 + rng.uniform(0, CHUNK), 0.0,
            rng.uniform(2.5, 4.5), rng.uniform(5.0, 8.5), (0.16, 0.3, 0.09) * rng.uniform(0.7, 1.3, 3),
            (0.3, 0.2, 0.12))
    # Parked vehicles at the kerb, oncoming traffic in the left lane.
    for _ in range(rng.binomial(2, 0.4)):
        side = 1 if rng.random() < 0.5 else -1
        truck = rng.random() < 0.2
        add(OBJ_VEHICLE, side * (rh - 0.2), z0 + rng.uniform(0, CHUNK), 0.0,
            2.2 if truck else rng.uniform(1.7, 1.9), rng.uniform(2.4, 3.0) if truck else rng.uniform(1.4, 1.6),
            VEHICLE_COLORS[rng.integers(len(VEHICLE_COLORS))], (0.08, 0.09, 0.1), 0 if side > 0 else 1)
    if rng.random() < 0.5:
        add(OBJ_VEHICLE, -layout.lane_offset + rng.uniform(-0.2, 0.2), z0 + rng.uniform(0, CHUNK),
            -rng.uniform(6, 11), rng.uniform(1.7, 1.9), rng.uniform(1.4, 1.6),
            VEHICLE_COLORS[rng.integers(len(VEHICLE_COLORS))], (0.08, 0.09, 0.1), 1)
    # Pedestrians walking along the sidewalks.
    for _ in range(rng.integers(0, 4)):
        side = 1 if rng.random() < 0.5 else -1
        add(OBJ_PEDESTRIAN, side * (rh + rng.uniform(0.6, sw - 0.4)), z0 + rng.uniform(0, CHUNK),
            rng.choice((-1, 1)) * rng.uniform(0.8, 1.6), rng.uniform(0.5, 0.65), rng.uniform(1.55, 1.95),
            CLOTH_COLORS[rng.integers(len(CLOTH_COLORS))], CLOTH_COLORS[rng.integers(len(CLOTH_COLORS))],
            0, rng.uniform(0, 6.28))
    if not rows:
        rows.append((OBJ_TREE, 1e3, z0, 0.0, 1.0, 1.0, (0, 0, 0), (0, 0, 0), 0, 0.0))  # never visible
    cols = list(zip(*rows))
    objs = Objects(np.array(cols[0]), np.array(cols[1], dtype=np.float64), np.array(cols[2], dtype=np.float64),
                   np.array(cols[3], dtype=np.float64), np.array(cols[4], dtype=np.float32),
                   np.array(cols[5], dtype=np.float32), np.array(cols[6], dtype=np.float32).clip(0, 1),
                   np.array(cols[7], dtype=np.float32).clip(0, 1), np.array(cols[8]),
                   np.array(cols[9], dtype=np.float32))
    return sides[0], sides[1], objs


def _concat(items):
    first = items[0]
    return type(first)(*[np.concatenate([getattr(it, f) for it in items])
                         for f in first.__dataclass_fields__])


def gather(seed: int, layout: Layout, z_from: float, z_to: float, margin: float = 60.0):
    """Segments of both sides and all sprites whose chunks overlap ``[z_from - margin, z_to + margin]``."""
    lo = int(np.floor((z_from - margin) / CHUNK))
    hi = int(np.floor((z_to + margin) / CHUNK))
    content = [chunk_content(seed, i, layout) for i in range(lo, hi + 1)]
    return (_concat([c[0] for c in content]), _concat([c[1] for c in content]),
            _concat([c[2] for c in content]))
