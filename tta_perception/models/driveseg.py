"""``driveseg``: the embedded world's semantic-segmentation source model.

A small ResNet encoder (strides 2-4-8-16, BatchNorm, residual blocks) with a U-Net-style decoder
back to 1/2 resolution, sized to train in minutes on a 2-core CPU and to run a 128×256 camera
frame in a few tens of milliseconds. DPLOT's candidate blocks are the six encoder residual blocks
(as the paper uses the residual blocks of the backbone).
"""
from __future__ import annotations

import torch
from torch import nn

from ..world.classes import CLASS_NAMES
from .base import Normalize, TTAModel
from .blocks import IMAGENET_MEAN, IMAGENET_STD, BasicBlock, SeparableConvBNReLU, conv_bn_relu
from .registry import register_model
from .resize import upsample_bilinear


class DriveSeg(TTAModel):
    task = "seg"
    candidate_blocks = ("layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1")

    def __init__(self, num_classes: int = len(CLASS_NAMES), widths: tuple[int, int, int, int] = (16, 24, 48, 96),
                 class_names: tuple[str, ...] = CLASS_NAMES):
        super().__init__()
        self.num_classes = int(num_classes)
        self.class_names = tuple(class_names)[:num_classes]
        w0, w1, w2, w3 = widths
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.stem = conv_bn_relu(3, w0, stride=2)                                   # 1/2
        self.layer1 = nn.Sequential(BasicBlock(w0, w1, 2), BasicBlock(w1, w1))      # 1/4
        self.layer2 = nn.Sequential(BasicBlock(w1, w2, 2), BasicBlock(w2, w2))      # 1/8
        self.layer3 = nn.Sequential(BasicBlock(w2, w3, 2), BasicBlock(w3, w3, dilation=2))  # 1/16
        # image-level context without BatchNorm: a 1×1 pooled map has no batch statistics at batch 1
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(w3, w3, 1), nn.ReLU(inplace=True))
        self.dec2 = SeparableConvBNReLU(w3 + w2, 64)   # 1/8
        self.dec1 = SeparableConvBNReLU(64 + w1, 48)   # 1/4
        self.dec0 = SeparableConvBNReLU(48 + w0, 32)   # 1/2
        self.head = nn.Conv2d(32, self.num_classes, 1)

    @staticmethod
    def _up_cat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = upsample_bilinear(x, skip.shape[-2:])
        return torch.cat([x, skip], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem(self.normalize(x))
        s1 = self.layer1(s0)
        s2 = self.layer2(s1)
        s3 = self.layer3(s2)
        s3 = s3 + self.context(s3)
        d = self.dec2(self._up_cat(s3, s2))
        d = self.dec1(self._up_cat(d, s1))
        return self.dec0(self._up_cat(d, s0))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


@register_model("driveseg")
def driveseg(num_classes: int = len(CLASS_NAMES), **kwargs) -> DriveSeg:
    return DriveSeg(num_classes=num_classes, **kwargs)
