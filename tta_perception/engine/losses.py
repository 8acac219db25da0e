"""Losses and small tensor helpers shared by the methods.

Every loss works on logits with the class axis at dim 1, so the same code serves classification
(B, C) and segmentation (B, C, H, W): the result keeps the per-sample / per-pixel shape and the
caller takes the mean (per-pixel losses for segmentation, as the issue asks).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd.profiler import record_function


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over dim 1; shape (B,) or (B, H, W)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def cross_entropy_soft(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """CE(softmax(target) -> logits), CoTTA's CIFAR loss; target gets no gradient by the caller."""
    return -(target_logits.softmax(1) * logits.log_softmax(1)).sum(1)


def symmetric_cross_entropy(x: torch.Tensor, x_ema: torch.Tensor, alpha: float = 0.5,
                            ema_prob: torch.Tensor | None = None,
                            ema_logprob: torch.Tensor | None = None) -> torch.Tensor:
    """SCE as in RMT/DPLOT: ``-(1-a)·Σ q log p - a·Σ p log q`` with p = softmax(x), q = softmax(x_ema).

    Gradient flows through ``x`` in both terms (as in the reference code); ``x_ema`` is a teacher
    output computed without grad. ``ema_prob``/``ema_logprob``: q and log q when the caller already
    has them (DPLOT scores both views against one target): the same values, computed once.
    """
    q = x_ema.softmax(1) if ema_prob is None else ema_prob
    log_q = x_ema.log_softmax(1) if ema_logprob is None else ema_logprob
    return -(1 - alpha) * (q * x.log_softmax(1)).sum(1) - alpha * (x.softmax(1) * log_q).sum(1)


def as_samples(logits: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, C); (B, C, H, W) -> (B·H·W, C): pixels become samples for the filters."""
    if logits.dim() == 2:
        return logits
    c = logits.shape[1]
    return logits.movedim(1, -1).reshape(-1, c)


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of images or output maps (last axis)."""
    return x.flip(-1)


@torch.no_grad()
@record_function("tta::ema")
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher = momentum·teacher + (1 - momentum)·student over parameters (official DPLOT/RMT:
    parameters only; buffers such as BN statistics stay the teacher's own)."""
    t_params = [p for p in teacher.parameters()]
    s_params = [p for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise RuntimeError("teacher and student have different parameter lists")
    if t_params:
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1.0 - momentum)


def predicted_classes(logits: torch.Tensor, max_pixels: int = 4096) -> torch.Tensor:
    """Arg-max classes as a flat long tensor; segmentation maps are strided down to about
    ``max_pixels`` per batch so collapse monitoring stays cheap."""
    pred = logits.argmax(1)
    flat = pred.reshape(-1)
    if flat.numel() > max_pixels:
        stride = max(1, flat.numel() // max_pixels)
        flat = flat[::stride]
    return flat
