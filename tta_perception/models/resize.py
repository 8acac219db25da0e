"""Bilinear resizing for the models, with a fast gradient for the exact 2× case on the CPU.

PyTorch's CPU kernel for the backward of ``interpolate(mode="bilinear")`` scatters every output
gradient into four inputs one element at a time; in channels-last it also converts the layout. On
driveseg's decoder (three 2× upsamplings and the 2× upsampling of the logits) that backward was a
quarter of DPLOT's adaptation floor (``bench --profile-step``, issue 14). A 2× upsampling with
``align_corners=False`` has fixed weights (1/4, 3/4) along each axis, so its adjoint is a handful of
whole-tensor operations. :func:`upsample_bilinear` keeps PyTorch's forward (bit-identical outputs)
and gives that exact-2× case this adjoint; the gradients are the same sums added in another order
(equal to float rounding, not bit-identical). Every other size, and every tensor that needs no
gradient or is not on the CPU, goes straight to ``F.interpolate``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def _adjoint_2x(g: torch.Tensor, dim: int) -> torch.Tensor:
    """Adjoint of the 2× linear upsampling (align_corners=False) along ``dim`` (size 2n -> n).

    Forward, per axis: ``y[0] = x[0]``, ``y[2i] = x[i-1]/4 + 3x[i]/4``, ``y[2i+1] = 3x[i]/4 + x[i+1]/4``,
    ``y[2n-1] = x[n-1]`` (PyTorch clamps the source index at both borders). So each input takes 3/4
    of its two own outputs and 1/4 of each neighbour's nearest output, and a border input the whole
    weight of its border output.
    """
    d = dim if dim >= 0 else dim + g.dim()
    n = g.shape[d] // 2
    pairs = g.unflatten(d, (n, 2))
    even, odd = pairs.select(d + 1, 0), pairs.select(d + 1, 1)   # y[2i], y[2i+1]
    out = (even + odd).mul_(0.75)
    if n > 1:
        out.narrow(d, 1, n - 1).add_(odd.narrow(d, 0, n - 1), alpha=0.25)
        out.narrow(d, 0, n - 1).add_(even.narrow(d, 1, n - 1), alpha=0.25)
    out.narrow(d, 0, 1).add_(even.narrow(d, 0, 1), alpha=0.25)
    out.narrow(d, n - 1, 1).add_(odd.narrow(d, n - 1, 1), alpha=0.25)
    return out


class _Upsample2x(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous()
        return F.interpolate(x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        gx = _adjoint_2x(_adjoint_2x(g, -1), -2)
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        return gx.contiguous(memory_format=fmt)


def upsample_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` with the fast CPU gradient
    when ``size`` is exactly twice the input's height and width."""
    size = (int(size[0]), int(size[1]))
    if (x.dim() == 4 and x.device.type == "cpu" and x.requires_grad and torch.is_grad_enabled()
            and size == (2 * x.shape[-2], 2 * x.shape[-1])):
        return _Upsample2x.apply(x)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
