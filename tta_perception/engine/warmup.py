"""DPLOT/RMT phase A, step 2: the mean-teacher warm-up (``warmup`` in the official dplot.py,
inherited from RMT).

``steps = num_samples // batch_size`` steps over the source batches (cycled); each step: the
student's SCE against the EMA teacher on clean source images (labels unused, as the official code),
Adam over all parameters with the learning rate ramped linearly ``lr·(i+1)/steps`` up to ``lr``,
then ``teacher = ema·teacher + (1-ema)·student``. BN uses batch statistics without touching the
running buffers (the official models have none), so the warmed model keeps the source statistics
for single-frame streaming.

Two callers. Phase A (``phase_a.prepare_bundle``) warms a copy with an Adam of its own, which ends
with it. RMT's own warm-up (official ``rmt.py``) passes its adaptation optimiser and teacher
(``optimizer=``, ``teacher=``): the optimiser that then adapts keeps the Adam moments of the warm-up,
and its learning rate is set back to ``lr`` at the end, as ``rmt.py`` does.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from .block_selection import split_batch
from .losses import ema_update, symmetric_cross_entropy
from .model_utils import model_device, set_bn_mode

NUM_SAMPLES = 50_000   # conf.py RMT.NUM_SAMPLES_WARM_UP
LR = 1e-3              # dplot.py: final_lr = 0.001 (cfg OPTIM.LR)
EMA = 0.999            # dplot.py update_ema_variables(alpha_teacher=0.999)
BETA = 0.9             # cfg OPTIM.BETA for the Adam of the warm-up


@dataclass
class WarmupResult:
    teacher: nn.Module
    steps: int
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None


def warmup_mean_teacher(model: nn.Module, batches: Iterable[Any], *, num_samples: int = NUM_SAMPLES,
                        lr: float = LR, ema: float = EMA, beta: float = BETA, steps: int | None = None,
                        progress: bool = False, optimizer: torch.optim.Optimizer | None = None,
                        teacher: nn.Module | None = None) -> WarmupResult:
    """Warm ``model`` (the student, in place) and return its EMA teacher.

    ``optimizer`` / ``teacher``: use these (RMT's own) instead of a fresh Adam over all parameters and
    a copy of ``model``; the optimiser's learning rate is ``lr`` again afterwards."""
    if iter(batches) is batches:
        raise TypeError("source batches must be re-iterable (a list or a DataLoader), not an iterator")
    dev = model_device(model)
    it = iter(batches)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("no source batches") from None
    bs = split_batch(first)[0].shape[0]
    n_steps = steps if steps is not None else max(1, num_samples // bs)
    set_bn_mode(model, "batch")
    model.requires_grad_(True)
    if teacher is None:
        teacher = copy.deepcopy(model)
    else:
        set_bn_mode(teacher, "batch")
    teacher.requires_grad_(False)
    opt = optimizer if optimizer is not None else torch.optim.Adam(model.parameters(), lr=lr, betas=(beta, 0.999))
    losses: list[float] = []
    lrs: list[float] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n_steps, desc="mean-teacher warm-up", unit="step")
    batch = first
    for i in range(n_steps):
        if i > 0:
            try:
                batch = next(it)
            except StopIteration:
                it = iter(batches)
                batch = next(it)
        for g in opt.param_groups:
            g["lr"] = lr * (i + 1) / n_steps
        lrs.append(lr * (i + 1) / n_steps)
        x = split_batch(batch)[0].to(dev)
        with torch.enable_grad():
            out = model(x)
            with torch.no_grad():
                t = teacher(x)
            loss = symmetric_cross_entropy(out, t).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        ema_update(teacher, model, ema)
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    for g in opt.param_groups:  # rmt.py: par["lr"] = self.final_lr after the warm-up
        g["lr"] = lr
    return WarmupResult(teacher=teacher, steps=n_steps, losses=losses, lrs=lrs, optimizer=opt)
