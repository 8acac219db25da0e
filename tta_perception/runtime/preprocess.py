"""Frames in: uint8 RGB images -> float tensors in [0, 1], the one pre-processing that training,
evaluation, the benchmark, the replay and the node all use (the models normalise inside)."""
from __future__ import annotations

from typing import Optional

import numpy as np


def to_tensor(images: np.ndarray):
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


#: a frame at least this many times the model size (each way) is first box-filtered (OpenCV's
#: INTER_AREA, on uint8) to twice the model size: the antialiased bilinear resize of a float copy
#: of a 4096x4096 frame took ~220 ms, the two steps ~10 ms; below the factor nothing changes.
PRESHRINK_FACTOR = 4


def frame_to_input(rgb: np.ndarray, size: Optional[tuple[int, int]] = None, device=None):
    """One (H, W, 3) uint8 frame -> (3, h, w) float in [0, 1] at the model ``size`` (bilinear,
    antialiased; no resize when it already has that size), on ``device``."""
    import torch.nn.functional as F

    if size is not None and rgb.shape[0] >= PRESHRINK_FACTOR * size[0] and rgb.shape[1] >= PRESHRINK_FACTOR * size[1]:
        import cv2

        rgb = cv2.resize(np.ascontiguousarray(rgb), (2 * int(size[1]), 2 * int(size[0])), interpolation=cv2.INTER_AREA)
    if not rgb.flags.writeable:  # torch warns on read-only buffers (bytes given by a caller)
        rgb = rgb.copy()
    x = to_tensor(rgb[None])[0]
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x[None], size=tuple(size), mode="bilinear", align_corners=False,
                          antialias=True)[0].clamp_(0.0, 1.0)
    return x if device is None else x.to(device)
