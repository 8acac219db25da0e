"""The contract every model in tta_perception follows, so any adaptation method runs on any model.

A ``TTAModel`` takes float images in [0, 1], shape (B, 3, H, W), and does its own input
normalisation (as the reference TTA framework wraps ImageNet models), so methods that perturb inputs
(DPLOT's ``x + 0.5·N(0, 1)`` block-selection noise, CoTTA's augmentations) work in image space.

- ``task``: ``"cls"`` (logits (B, C)) or ``"seg"`` (logits (B, C, H, W) at the input resolution).
- ``num_classes`` and ``class_names``.
- ``candidate_blocks``: names (for ``model.get_submodule``) of the residual blocks DPLOT's
  domain-specific block selection scores, defined next to each architecture.
- ``forward_features(x)``: penultimate features, (B, D) for classification, (B, D, h, w) for
  segmentation; DPLOT's class prototypes are means of these.
- ``classify(features)``: the head, logits at the feature resolution.
- ``forward(x)``: ``classify(forward_features(x))``, upsampled to (H, W) for segmentation.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .resize import upsample_bilinear

TASKS = ("cls", "seg")


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` inside the model, so inputs stay images in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TTAModel(nn.Module):
    """Base class: subclasses set the attributes and implement the two feature/head methods."""

    task: str = "cls"
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    candidate_blocks: tuple[str, ...] = ()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def classify(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classify(self.forward_features(x))
        return seg_logits(logits, x) if self.task == "seg" else logits


def seg_logits(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Segmentation logits at the input's size, in the standard (NCHW) layout even when the model
    runs channels-last: with a dozen classes, the per-pixel softmax, entropy and losses over the
    class axis vectorise along the width there and took about 5x longer in channels-last (issue 14).
    The values are the same bits either way (a copy)."""
    if logits.shape[-2:] != x.shape[-2:]:
        logits = upsample_bilinear(logits, x.shape[-2:])
    return logits.contiguous()


class SingleFrameBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that also works on one value per channel in training mode (a single frame after a
    global pooling, e.g. DeepLabV3's ASPP image-pooling branch; or a small frame downsampled to
    1x1): batch statistics do not exist there, so it normalises with its running statistics instead
    of failing. Identical to BatchNorm2d otherwise (same parameters, buffers and outputs).

    Adaptation methods put every BN in training mode and streams come one frame at a time, so the
    engine gives every BatchNorm2d this behaviour (``engine.model_utils.set_bn_mode``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() // x.shape[1] <= 1 and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        return super().forward(x)


class PerFrameBatchNorm2d(SingleFrameBatchNorm2d):
    """Training-mode BatchNorm whose statistics are each frame's own, also in a batch of frames
    from several cameras: a batch of N normalises exactly as N batch-1 forwards would (the
    streaming protocol's per-frame statistics), instead of pooling the cameras' statistics. The
    N frames are laid side by side as N*C channels of one image, so one ``F.batch_norm`` call does
    it. One frame: the parent's computation, unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if not self.training or n == 1 or x.dim() != 4 or x.shape[2] * x.shape[3] <= 1:
            return super().forward(x)
        c = x.shape[1]
        weight = self.weight.repeat(n) if self.weight is not None else None
        bias = self.bias.repeat(n) if self.bias is not None else None
        y = F.batch_norm(x.reshape(1, n * c, *x.shape[2:]), None, None, weight, bias, True, 0.0, self.eps)
        return y.reshape(x.shape)


def check_model(model: nn.Module) -> None:
    """Raise a clear error if ``model`` does not follow the contract above."""
    for attr in ("task", "num_classes", "candidate_blocks", "forward_features", "classify"):
        if not hasattr(model, attr):
            raise TypeError(f"{type(model).__name__} is not a TTAModel: missing {attr!r}")
    if model.task not in TASKS:
        raise ValueError(f"model.task must be one of {TASKS}, got {model.task!r}")
    names = dict(model.named_modules())
    missing = [b for b in model.candidate_blocks if b not in names]
    if missing:
        raise ValueError(f"candidate_blocks not found in {type(model).__name__}: {missing}")
