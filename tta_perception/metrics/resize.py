"""Class-id maps at another size without mixing ids: predictions resized to the labels they are
scored against, and the node's outputs upsampled to the camera size."""
from __future__ import annotations

import numpy as np


def nearest_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest neighbour (pixel centres); two 1-D takes, several times faster than one 2-D fancy
    index on camera-sized images (the node upsamples every output with it)."""
    h, w = array.shape[:2]
    if (h, w) == (height, width):
        return array
    rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(np.intp)
    cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(np.intp)
    return array.take(rows, axis=0).take(cols, axis=1)
