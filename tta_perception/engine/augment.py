"""Test-time augmentations of CoTTA / RMT, written on batched tensors.

``cotta_augment`` follows the reference framework's ``get_tta_transforms`` (CoTTA's CIFAR/ImageNet
augmentation: colour jitter with gamma in random order, edge padding + random affine, Gaussian blur,
centre crop, random h-flip, Gaussian noise, clip); like the reference, one draw of the random
parameters is applied to the whole batch. Geometric augmentations cannot be compared pixel-wise
for segmentation, so segmentation uses :func:`invertible_augment` (photometric jitter + a flip that
the caller maps back with ``hflip``) and CoTTA's multi-scale + flip ensemble (``cotta.py``).
"""
from __future__ import annotations

import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode


def _u(lo: float, hi: float) -> float:
    return float(torch.empty(1).uniform_(lo, hi))


def color_jitter(x: torch.Tensor, soft: bool = False) -> torch.Tensor:
    """ColorJitterPro: brightness, contrast, saturation, hue, gamma in a random order."""
    ranges = {
        0: (0.8, 1.2) if soft else (0.6, 1.4),       # brightness
        1: (0.85, 1.15) if soft else (0.7, 1.3),     # contrast
        2: (0.75, 1.25) if soft else (0.5, 1.5),     # saturation
        3: (-0.03, 0.03) if soft else (-0.06, 0.06),  # hue
        4: (0.85, 1.15) if soft else (0.7, 1.3),     # gamma
    }
    for i in torch.randperm(5).tolist():
        f = _u(*ranges[i])
        if i == 0:
            x = TF.adjust_brightness(x, f)
        elif i == 1:
            x = TF.adjust_contrast(x, f)
        elif i == 2:
            x = TF.adjust_saturation(x, f)
        elif i == 3:
            x = TF.adjust_hue(x, f)
        else:
            x = TF.adjust_gamma(x.clamp(1e-8, 1.0), f)  # clamp as the reference: NaN grads otherwise
    return x


def cotta_augment(x: torch.Tensor, soft: bool = False, gaussian_std: float = 0.005) -> torch.Tensor:
    """One CoTTA augmentation of the batch ``x`` (B, 3, H, W) in [0, 1]."""
    h, w = x.shape[-2:]
    n = h
    x = x.clamp(0.0, 1.0)
    x = color_jitter(x, soft)
    pad = int(n / 2)
    x = TF.pad(x, [pad, pad, pad, pad], padding_mode="edge")
    ph, pw = x.shape[-2:]
    deg = 8.0 if soft else 15.0
    angle = _u(-deg, deg)
    tx = round(_u(-pw / 16, pw / 16))
    ty = round(_u(-ph / 16, ph / 16))
    scale = _u(0.95, 1.05) if soft else _u(0.9, 1.1)
    x = TF.affine(x, angle=angle, translate=[tx, ty], scale=scale, shear=[0.0, 0.0],
                  interpolation=InterpolationMode.BILINEAR, fill=0.0)
    sigma = _u(0.001, 0.25 if soft else 0.5)
    x = TF.gaussian_blur(x, kernel_size=[5, 5], sigma=[sigma, sigma])
    x = TF.center_crop(x, [h, w])
    if float(torch.rand(1)) < 0.5:
        x = x.flip(-1)
    x = x + torch.randn_like(x) * gaussian_std
    return x.clamp(0.0, 1.0)


def invertible_augment(x: torch.Tensor, soft: bool = False, gaussian_std: float = 0.005) -> tuple[torch.Tensor, bool]:
    """Photometric CoTTA jitter + noise + random h-flip; returns (x_aug, flipped) so the caller can
    flip the output map back before comparing it pixel-wise (segmentation)."""
    x = color_jitter(x.clamp(0.0, 1.0), soft)
    flipped = bool(float(torch.rand(1)) < 0.5)
    if flipped:
        x = x.flip(-1)
    x = x + torch.randn_like(x) * gaussian_std
    return x.clamp(0.0, 1.0), flipped
