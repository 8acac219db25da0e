"""Semantic classes of the embedded world, named and coloured as in CARLA / CityScapes."""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255  # "unlabeled" in label images (ROS convention for mono8 class-id images)

# (name, CityScapes/CARLA palette colour); the index is the class id.
_CLASSES = (
    ("road", (128, 64, 128)),
    ("sidewalk", (244, 35, 232)),
    ("building", (70, 70, 70)),
    ("fence", (190, 153, 153)),
    ("pole", (153, 153, 153)),
    ("traffic_sign", (220, 220, 0)),
    ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)),
    ("sky", (70, 130, 180)),
    ("pedestrian", (220, 20, 60)),
    ("vehicle", (0, 0, 142)),
    ("road_line", (157, 234, 50)),
)
CLASS_NAMES: tuple[str, ...] = tuple(n for n, _ in _CLASSES)
NUM_CLASSES = len(CLASS_NAMES)
PALETTE = np.array([c for _, c in _CLASSES], dtype=np.uint8)
CLASS_ID = {n: i for i, n in enumerate(CLASS_NAMES)}

ROAD, SIDEWALK, BUILDING, FENCE, POLE, SIGN, VEGETATION, TERRAIN, SKY, PEDESTRIAN, VEHICLE, ROAD_LINE = \
    range(NUM_CLASSES)


def colorize(labels: np.ndarray) -> np.ndarray:
    """Class-id image (H, W) -> RGB (H, W, 3) in the palette; ``IGNORE_INDEX`` is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = PALETTE
    return lut[labels]
