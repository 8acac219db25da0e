"""``signnet``: the embedded world's traffic-sign classifier (64×64 crops, 12 sign types).

A CIFAR-style ResNet (three stages of two basic blocks, BatchNorm) — the same family as the
WRN/ResNeXt models of the paper's classification benchmarks, small enough for CPU. Candidate
blocks for DPLOT: the six residual blocks.
"""
from __future__ import annotations

import torch
from torch import nn

from ..world.signs import SIGN_NAMES
from .base import Normalize, TTAModel
from .blocks import IMAGENET_MEAN, IMAGENET_STD, BasicBlock, conv_bn_relu
from .registry import register_model


class SignNet(TTAModel):
    task = "cls"
    candidate_blocks = ("layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1")

    def __init__(self, num_classes: int = len(SIGN_NAMES), widths: tuple[int, int, int, int] = (16, 16, 32, 64),
                 class_names: tuple[str, ...] = SIGN_NAMES):
        super().__init__()
        self.num_classes = int(num_classes)
        self.class_names = tuple(class_names)[:num_classes]
        w0, w1, w2, w3 = widths
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.stem = conv_bn_relu(3, w0, stride=2)                                # 32×32
        self.layer1 = nn.Sequential(BasicBlock(w0, w1), BasicBlock(w1, w1))     # 32×32
        self.layer2 = nn.Sequential(BasicBlock(w1, w2, 2), BasicBlock(w2, w2))  # 16×16
        self.layer3 = nn.Sequential(BasicBlock(w2, w3, 2), BasicBlock(w3, w3))  # 8×8
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, self.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(self.normalize(x)))))
        return torch.flatten(self.pool(x), 1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


@register_model("signnet")
def signnet(num_classes: int = len(SIGN_NAMES), **kwargs) -> SignNet:
    return SignNet(num_classes=num_classes, **kwargs)
