"""CARLA semantic-camera images -> class ids of the embedded world (for scoring in CARLA mode).

The carla-ros-bridge publishes its ``semantic_segmentation`` camera converted with
``carla.ColorConverter.CityScapesPalette``: each pixel is the CityScapes colour of CARLA's semantic tag
(bgra8), not a class id. ``palette_to_ids`` maps those colours to the 12 classes of ``classes.py``.
CARLA tags with a counterpart map to it (car, truck, bus, train, motorcycle, bicycle -> vehicle;
rider -> pedestrian); tags without one (wall, traffic light, guard rail, static, water, ...) and
colours that are no CARLA tag become 255 (unlabeled), so they are not scored rather than scored
against a class the model never learnt. Colours are those of CARLA 0.9.10-0.9.15's
``CityScapesPalette`` (LibCarla ``CityScapesPalette.h``).
"""
from __future__ import annotations

import numpy as np

from .classes import CLASS_ID, IGNORE_INDEX

# CARLA tag -> (CityScapes colour RGB, class of the embedded world or None = unlabeled)
CARLA_TAGS: dict[str, tuple[tuple[int, int, int], str | None]] = {
    "unlabeled": ((0, 0, 0), None),
    "road": ((128, 64, 128), "road"),
    "sidewalk": ((244, 35, 232), "sidewalk"),
    "building": ((70, 70, 70), "building"),
    "wall": ((102, 102, 156), None),
    "fence": ((190, 153, 153), "fence"),
    "pole": ((153, 153, 153), "pole"),
    "traffic_light": ((250, 170, 30), None),
    "traffic_sign": ((220, 220, 0), "traffic_sign"),
    "vegetation": ((107, 142, 35), "vegetation"),
    "terrain": ((152, 251, 152), "terrain"),
    "sky": ((70, 130, 180), "sky"),
    "pedestrian": ((220, 20, 60), "pedestrian"),
    "rider": ((255, 0, 0), "pedestrian"),
    "car": ((0, 0, 142), "vehicle"),
    "truck": ((0, 0, 70), "vehicle"),
    "bus": ((0, 60, 100), "vehicle"),
    "train": ((0, 80, 100), "vehicle"),
    "motorcycle": ((0, 0, 230), "vehicle"),
    "bicycle": ((119, 11, 32), "vehicle"),
    "static": ((110, 190, 160), None),
    "dynamic": ((170, 120, 50), None),
    "other": ((55, 90, 80), None),
    "water": ((45, 60, 150), None),
    "road_line": ((157, 234, 50), "road_line"),
    "ground": ((81, 0, 81), None),
    "bridge": ((150, 100, 100), None),
    "rail_track": ((230, 150, 140), None),
    "guard_rail": ((180, 165, 180), None),
}


def _lut() -> dict[int, int]:
    out = {}
    for colour, cls in CARLA_TAGS.values():
        r, g, b = colour
        out[(r << 16) | (g << 8) | b] = IGNORE_INDEX if cls is None else CLASS_ID[cls]
    return out


_KEYS, _VALUES = (np.array(v) for v in zip(*sorted(_lut().items())))


def palette_to_ids(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB in CARLA's CityScapes palette -> (H, W) uint8 class ids (255: unlabeled).

    Decode the bridge's bgra8 first (``runtime.image_codec.raw_to_rgb``). Colours that are no CARLA tag
    (e.g. blended by resizing) are unlabeled.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pos = np.clip(np.searchsorted(_KEYS, packed), 0, len(_KEYS) - 1)
    found = _KEYS[pos] == packed
    return np.where(found, _VALUES[pos], IGNORE_INDEX).astype(np.uint8)
