"""Models for the fleet tests, importable by Ray's worker processes (``architecture:
fleet_models:slow_tiny``, with test/ on PYTHONPATH): the tiny test network, slowed down so that a
bag lasts long enough to kill its worker half-way."""
from __future__ import annotations

import time

import torch

from test_ros_helpers import SEG_CLASSES, TinyNet, _seeded

FORWARD_S = 0.03


class _Slowed(TinyNet):
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(FORWARD_S)
        return super().forward_features(x)


def slow_tiny() -> TinyNet:
    """``tiny_seg`` (same weights) with each forward pass taking FORWARD_S longer."""
    return _seeded(lambda: _Slowed("seg", SEG_CLASSES))
