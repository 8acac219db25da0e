"""Model configuration shared by the methods: BatchNorm modes and parameter groups.

BatchNorm design (why it is not the reference framework's "delete the running stats"):
the reference framework sets ``track_running_stats = False`` and drops the running buffers so BN
always uses the current test batch. We keep the buffers and run BN in *train* mode with a fixed
momentum instead: normalisation still uses the test-batch statistics (identical outputs to the
reference for the batch protocol), and as a side effect the running buffers become an exponential
moving average of recent *test* statistics. The streaming adapter predicts single frames with BN in
eval mode, i.e. with that EMA, which works for a batch of one. The state-dict keys stay those of the
source model, so checkpoints and bundles stay interchangeable.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..models.base import seg_logits

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NORM = _BN + (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)


def bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BN)]


def set_bn_mode(model: nn.Module, mode: str, momentum: float | None = None) -> None:
    """Put every BatchNorm of ``model`` in one of three modes; the rest of the model stays eval.

    - ``"source"``: eval, running (source or EMA-of-test) statistics.
    - ``"batch"``: normalise with the batch statistics, never touch the running buffers
      (used for block selection / warm-up copies and for side computations).
    - ``"frame"``: as ``"batch"``, but each frame of a batch with its own statistics
      (``PerFrameBatchNorm2d``): the streaming protocol's per-frame statistics for a batch of
      frames from several cameras; identical to ``"batch"`` for one frame.
    - ``"batch_ema"``: normalise with the batch statistics and update the running buffers as an
      EMA with ``momentum`` (what adapting methods use; see the module docstring).
    """
    from ..models.base import PerFrameBatchNorm2d, SingleFrameBatchNorm2d

    model.eval()  # dropout / stochastic depth off, as the reference framework does
    for m in bn_modules(model):
        if mode != "source" and type(m) is nn.BatchNorm2d:
            m.__class__ = SingleFrameBatchNorm2d  # batch 1, 1x1: running statistics instead of failing
        if mode == "frame" and type(m) is SingleFrameBatchNorm2d:
            m.__class__ = PerFrameBatchNorm2d  # same parameters and buffers: a copy stays loadable
        elif mode != "frame" and type(m) is PerFrameBatchNorm2d:
            m.__class__ = SingleFrameBatchNorm2d
        if mode == "source":
            m.eval()
            if m.running_mean is not None:
                m.track_running_stats = True
        elif mode in ("batch", "frame"):
            m.train()
            m.track_running_stats = False  # F.batch_norm then gets running=None: no update
        elif mode == "batch_ema":
            m.train()
            if m.running_mean is None:  # model built without running stats: nothing to track
                m.track_running_stats = False
            else:
                m.track_running_stats = True
                if momentum is not None:
                    m.momentum = momentum
        else:
            raise ValueError(f"unknown BN mode {mode!r}")


def named_params_of_blocks(model: nn.Module, blocks: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """Parameters inside the named sub-modules (exact module names, no substring matching, so
    ``layer1.1`` never also catches ``layer1.10`` as the official name filter would)."""
    out: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for b in blocks:
        try:
            sub = model.get_submodule(b)
        except AttributeError as e:
            raise ValueError(f"block {b!r} not found in {type(model).__name__}") from e
        for n, p in sub.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append((f"{b}.{n}", p))
    return out


def named_norm_params(model: nn.Module, exclude: Iterable[str] = ()) -> list[tuple[str, nn.Parameter]]:
    """Affine weight/bias of normalisation layers (Tent/EATA/SAR's parameter set).

    ``exclude``: module-name fragments to skip (SAR skips the top layers, e.g. ``layer4``)."""
    exclude = tuple(exclude)
    out = []
    for mn, m in model.named_modules():
        if not isinstance(m, _NORM):
            continue
        if any(e in mn for e in exclude):
            continue
        for pn, p in m.named_parameters(recurse=False):
            if pn in ("weight", "bias"):
                out.append((f"{mn}.{pn}" if mn else pn, p))
    return out


def freeze_all_but(model: nn.Module, params: Iterable[nn.Parameter]) -> None:
    """requires_grad only on ``params`` so backward computes nothing else."""
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def forward_with_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) in one pass, following the TTAModel contract (seg logits upsampled)."""
    feats = model.forward_features(x)
    logits = model.classify(feats)
    return feats, (seg_logits(logits, x) if getattr(model, "task", "cls") == "seg" else logits)


@torch.no_grad()
def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True if no tensor holds a NaN/Inf: fused per-tensor norms (a NaN/Inf anywhere makes its norm
    non-finite) and a single host sync, so the per-step guard stays cheap on big models."""
    ts = [t.detach() for t in tensors if t.numel()]
    if not ts:
        return True
    try:
        norms = torch._foreach_norm(ts)
    except (RuntimeError, AttributeError):  # old torch / unusual dtypes
        norms = [torch.linalg.vector_norm(t.float()) for t in ts]
    by_dev: dict[torch.device, list[torch.Tensor]] = {}
    for n in norms:
        by_dev.setdefault(n.device, []).append(n.float())
    return all(bool(torch.isfinite(torch.stack(v)).all()) for v in by_dev.values())


@torch.no_grad()
def copy_into(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    """dst[i].copy_(src[i]) for all i, fused when possible."""
    if not dst:
        return
    try:
        torch._foreach_copy_(dst, src)
    except (RuntimeError, AttributeError):
        for d, s in zip(dst, src):
            d.copy_(s)


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor],
                other: Callable[[Any], Any] = lambda x: x) -> Any:
    """The same nested dict/list/tuple with ``fn`` applied to every tensor and ``other`` to every
    other leaf (state snapshots: clones, CPU copies)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn, other) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn, other) for v in obj)
    return other(obj)


def is_cuda_oom(err: BaseException) -> bool:
    """CUDA ran out of memory (the exception type where torch has one, else its message)."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(err, oom)) or "CUDA out of memory" in str(err)
