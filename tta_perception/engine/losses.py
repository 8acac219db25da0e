"""Losses and small tensor helpers shared by the methods.

Every loss works on logits with the class axis at dim 1, so the same code serves classification
(B, C) and segmentation (B, C, H, W): the result keeps the per-sample / per-pixel shape and the
caller takes the mean (per-pixel losses for segmentation, as the issue asks).

The entropy and the symmetric cross-entropy have closed-form gradients with respect to the logits
(``-p·(log p + H)``; ``(1-a)·(p·Σq - q) - a·p·(log q - Σ p log q)``). Autograd would differentiate
through softmax, log-softmax, the products and the sums one by one, a dozen passes over the
full-resolution map that made these losses most of DPLOT's step beyond its forward/backward passes
(issue 14). Both losses therefore compute their values exactly as the plain expressions (the same
operations, the same bits) and give autograd the closed form: the gradient is the same sum
computed in another order (equal to float rounding, not bit-identical).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.autograd.profiler import record_function


def _entropy(p: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    return -(p * log_p).sum(1)


def _sce(p, log_p, q, log_q, alpha: float, p_log_q: torch.Tensor | None = None) -> torch.Tensor:
    """``-(1-a)·Σ q log p - a·Σ p log q`` from ``p = softmax(x)``, ``log p``; ``p_log_q``: Σ p log q
    when the caller already has it (the same reduction, not done twice)."""
    s = (p * log_q).sum(1) if p_log_q is None else p_log_q
    return -(1 - alpha) * (q * log_p).sum(1) - alpha * s


class _SoftmaxLosses(torch.autograd.Function):
    """Per-pixel entropy H and/or symmetric cross-entropy of ``softmax(x)`` against a target ``q``:
    one softmax and one log-softmax of ``x`` serve both, and the backward is the closed form. An
    output that gets no gradient (DPLOT asks for each loss's gradient separately) costs nothing."""

    @staticmethod
    def forward(ctx, x, q, log_q, alpha: float, entropy: bool, sce: bool):
        ctx.set_materialize_grads(False)
        p, log_p = x.softmax(1), x.log_softmax(1)
        h = _entropy(p, log_p) if entropy else None
        p_log_q = (p * log_q).sum(1, keepdim=True) if sce else None
        out = _sce(p, log_p, q, log_q, alpha, p_log_q.squeeze(1)) if sce else None
        ctx.alpha = alpha
        ctx.save_for_backward(p, log_p if entropy else None, h, q, log_q, p_log_q)
        return h, out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_h, g_sce):
        p, log_p, h, q, log_q, p_log_q = ctx.saved_tensors
        grad = None
        if g_h is not None:      # dH/dx = -p (log p + H)
            grad = (log_p + h.unsqueeze(1)).mul_(p).mul_(g_h.neg().unsqueeze(1))
        if g_sce is not None:
            # d/dx -Σ q log p = p Σq - q;  d/dx -Σ p log q = -p (log q - Σ p log q); weighted 1-a, a:
            # p ((1-a) Σq + a Σ p log q - a log q) - (1-a) q, with the per-pixel part computed once
            a = ctx.alpha
            per_pixel = q.sum(1, keepdim=True).mul_(1 - a).add_(p_log_q, alpha=a)
            term = torch.add(per_pixel, log_q, alpha=-a).mul_(p).sub_(q, alpha=1 - a).mul_(g_sce.unsqueeze(1))
            grad = term if grad is None else grad.add_(term)
        return grad, None, None, None, None, None


def _needs_grad(x: torch.Tensor, *targets: torch.Tensor) -> bool:
    return x.requires_grad and torch.is_grad_enabled() and not any(t.requires_grad for t in targets)


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over dim 1; shape (B,) or (B, H, W)."""
    if not _needs_grad(logits):
        return _entropy(logits.softmax(1), logits.log_softmax(1))
    return _SoftmaxLosses.apply(logits, None, None, 0.0, True, False)[0]


def entropy_and_symmetric_cross_entropy(x: torch.Tensor, q: torch.Tensor, log_q: torch.Tensor,
                                        alpha: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(softmax_entropy(x), symmetric_cross_entropy(x, ·, alpha, q, log_q))`` from one softmax and
    one log-softmax of ``x`` (DPLOT's two losses on the same student output): the same values."""
    if not _needs_grad(x, q, log_q):
        p, log_p = x.softmax(1), x.log_softmax(1)
        return _entropy(p, log_p), _sce(p, log_p, q, log_q, alpha)
    return _SoftmaxLosses.apply(x, q, log_q, float(alpha), True, True)


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
    if not _needs_grad(x, q, log_q):
        return _sce(x.softmax(1), x.log_softmax(1), q, log_q, alpha)
    return _SoftmaxLosses.apply(x, q, log_q, float(alpha), False, True)[1]


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
    n = logits.numel() // logits.shape[1]   # samples or pixels
    if n <= max_pixels:
        return logits.argmax(1).reshape(-1)
    # the arg-max of every stride-th pixel of the flattened map, taken on those pixels only (the
    # arg-max of a whole 128x256 window cost 20 ms per step: bench --profile-step)
    idx = torch.arange(0, n, max(1, n // max_pixels), device=logits.device)
    if logits.dim() == 2:
        return logits[idx].argmax(1)
    hw = n // logits.shape[0]
    return logits.flatten(2)[idx // hw, :, idx % hw].argmax(1)
