"""Tiny models that follow the TTAModel contract, for the engine tests (fast on 2 CPU cores)."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from tta_perception.models.base import Normalize, TTAModel


class Block(nn.Module):
    """Residual block: conv-BN-ReLU-conv-BN + identity."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class TinyCls(TTAModel):
    task = "cls"

    def __init__(self, num_classes: int = 5, width: int = 8):
        super().__init__()
        self.num_classes = num_classes
        self.class_names = tuple(f"c{i}" for i in range(num_classes))
        self.candidate_blocks = ("block1", "block2", "block3")
        self.norm = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = Block(width)
        self.block2 = Block(width)
        self.block3 = Block(width)
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x):
        h = self.block3(self.block2(self.block1(self.stem(self.norm(x)))))
        return h.mean((2, 3))

    def classify(self, f):
        return self.fc(f)


class TinySeg(TTAModel):
    task = "seg"

    def __init__(self, num_classes: int = 4, width: int = 8):
        super().__init__()
        self.num_classes = num_classes
        self.class_names = tuple(f"s{i}" for i in range(num_classes))
        self.candidate_blocks = ("block1", "block2")
        self.norm = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = Block(width)
        self.block2 = Block(width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward_features(self, x):
        return self.block2(self.block1(self.stem(self.norm(x))))

    def classify(self, f):
        return self.head(f)


def tiny_cls(seed: int = 0, **kw) -> TinyCls:
    torch.manual_seed(seed)
    return TinyCls(**kw)


def tiny_seg(seed: int = 0, **kw) -> TinySeg:
    torch.manual_seed(seed)
    return TinySeg(**kw)


def images(b: int = 4, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)
