"""DPLOT phase A, step 1: domain-specific block selection (official ``block_selection`` in
``classification/methods/dplot.py``).

For each candidate block b, on a fresh copy of the source model:
  prototypes before (mean penultimate feature per class, clean source images)
  -> entropy minimisation of ONLY block b (Adam lr 1e-3) on ``x + 0.5·N(0, 1)`` (labels unused)
  -> prototypes after; score_b = mean over classes of cos(before_c, after_c).
Scores are min-max scaled and every block with scaled score > 0.75 is selected.

As in the official code the copies normalise with batch statistics (its configured model has no
running statistics), the noisy images are *not* clipped to [0, 1] (``clip=True`` is available), the
entropy loop stops after 2001 batches and the prototype loops after 501 (about one CIFAR epoch).
Differences, all harmless: blocks are matched by exact module name (the official substring test
would let ``layer1.1`` also match ``layer1.10``), only block b gets gradients (the official code
computes and discards the others), and classes absent from the data are left out of the mean.

Source batches: a re-iterable (list, DataLoader) of ``(images, labels)`` tuples or dicts with
``image``/``label``; images float (B, 3, H, W) in [0, 1]; labels (B,) or, for segmentation,
(B, H, W) with ``ignore_index`` for unlabelled pixels.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .losses import softmax_entropy
from .model_utils import freeze_all_but, model_device, named_params_of_blocks, set_bn_mode

THRESHOLD = 0.75          # dplot.py block_selection(alpha=0.75)
NOISE_STD = 0.5           # dplot.py: imgs_src + 0.5 * torch.randn_like(imgs_src)
LR = 1e-3                 # dplot.py: optim.Adam(params, lr=0.001)
MAX_BATCHES = 2001        # dplot.py: `if i > 2000: break` in the entropy loop
PROTO_MAX_BATCHES = 501   # dplot.py get_prototype: `if i > 500: break`


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images, labels) from a tuple/list batch or a dict with image/label keys."""
    if isinstance(batch, dict):
        return batch["image"], batch.get("label")
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    if isinstance(batch, torch.Tensor):
        return batch, None
    raise TypeError(f"cannot read a batch of type {type(batch).__name__}")


def _check_reiterable(batches: Iterable[Any]) -> None:
    if iter(batches) is batches:
        raise TypeError("source batches must be re-iterable (a list or a DataLoader), not an iterator")


@torch.no_grad()
def compute_prototypes(model: nn.Module, batches: Iterable[Any], num_classes: int,
                       max_batches: int | None = PROTO_MAX_BATCHES, ignore_index: int = 255) -> torch.Tensor:
    """Class prototypes (C, D): mean of ``forward_features`` per class (per pixel for seg, labels
    resized to the feature map by nearest neighbour). Rows of absent classes are NaN.

    BN runs on batch statistics without touching the running buffers (the official setting)."""
    dev = model_device(model)
    was_training = [(m, m.training, getattr(m, "track_running_stats", None)) for m in model.modules()]
    set_bn_mode(model, "batch")
    sums = counts = None
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x, y = split_batch(batch)
            if y is None:
                raise ValueError("prototypes need labelled source batches")
            x, y = x.to(dev), y.to(dev).long()
            f = model.forward_features(x)
            if f.dim() == 4:  # segmentation: pixels are samples
                y = F.interpolate(y[:, None].float(), size=f.shape[-2:], mode="nearest")[:, 0].long()
                f = f.movedim(1, -1).reshape(-1, f.shape[1])
                y = y.reshape(-1)
            else:
                f = f.flatten(1)
            keep = (y >= 0) & (y < num_classes) & (y != ignore_index)
            f, y = f[keep].float(), y[keep]
            if sums is None:
                sums = torch.zeros(num_classes, f.shape[1], device=dev)
                counts = torch.zeros(num_classes, device=dev)
            sums.index_add_(0, y, f)
            counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float32))
    finally:
        for m, tr, trs in was_training:
            m.training = tr
            if trs is not None:
                m.track_running_stats = trs
    if sums is None:
        raise ValueError("no source batches")
    protos = sums / counts.clamp_min(1)[:, None]
    protos[counts == 0] = float("nan")
    return protos.cpu()


def prototype_similarity(before: torch.Tensor, after: torch.Tensor) -> float:
    """Mean over classes (present in both) of cos(before_c, after_c)."""
    ok = torch.isfinite(before).all(1) & torch.isfinite(after).all(1)
    if not bool(ok.any()):
        raise ValueError("no class has a prototype")
    return float(F.cosine_similarity(before[ok].double(), after[ok].double(), dim=1).mean())


def minmax_scale(values: Sequence[float]) -> list[float]:
    """(v - min) / (max - min); all zeros when the range is 0 (sklearn.minmax_scale behaviour)."""
    lo, hi = min(values), max(values)
    if hi - lo <= 0:
        return [0.0 for _ in values]
    return [(v - lo) / (hi - lo) for v in values]


def select_from_scores(scores: dict[str, float], threshold: float = THRESHOLD) -> tuple[list[str], dict[str, float]]:
    """The selection rule: min-max scale, keep blocks with scaled score strictly > threshold."""
    names = list(scores)
    scaled = dict(zip(names, minmax_scale([scores[n] for n in names])))
    return [n for n in names if scaled[n] > threshold], scaled


def score_block(model: nn.Module, block: str, batches: Iterable[Any], num_classes: int, *,
                lr: float = LR, noise_std: float = NOISE_STD, clip: bool = False,
                max_batches: int | None = MAX_BATCHES, proto_max_batches: int | None = PROTO_MAX_BATCHES,
                seed: int = 0, ignore_index: int = 255) -> float:
    """Prototype similarity before/after entropy-minimising only ``block`` on noisy source images.
    ``model`` itself is not modified."""
    _check_reiterable(batches)
    m = copy.deepcopy(model)
    dev = model_device(m)
    set_bn_mode(m, "batch")
    params = [p for _, p in named_params_of_blocks(m, [block])]
    if not params:
        raise ValueError(f"block {block!r} has no parameters")
    freeze_all_but(m, params)
    before = compute_prototypes(m, batches, num_classes, proto_max_batches, ignore_index)
    set_bn_mode(m, "batch")
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.enable_grad():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x, _ = split_batch(batch)
            x = x.to(dev)
            noisy = x + noise_std * torch.randn(x.shape, generator=gen, device=dev, dtype=x.dtype)
            if clip:
                noisy = noisy.clamp(0.0, 1.0)
            loss = softmax_entropy(m(noisy)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    after = compute_prototypes(m, batches, num_classes, proto_max_batches, ignore_index)
    return prototype_similarity(before, after)


@dataclass
class BlockSelectionResult:
    selected: list[str]
    scores: dict[str, float]
    scaled_scores: dict[str, float]
    threshold: float = THRESHOLD
    settings: dict[str, Any] = field(default_factory=dict)


def select_blocks(model: nn.Module, batches: Iterable[Any], blocks: Sequence[str] | None = None, *,
                  threshold: float = THRESHOLD, lr: float = LR, noise_std: float = NOISE_STD,
                  clip: bool = False, max_batches: int | None = MAX_BATCHES,
                  proto_max_batches: int | None = PROTO_MAX_BATCHES, seed: int = 0,
                  ignore_index: int = 255, progress: bool = False) -> BlockSelectionResult:
    """Score every candidate block (default ``model.candidate_blocks``) and apply the rule."""
    blocks = list(blocks if blocks is not None else model.candidate_blocks)
    if not blocks:
        raise ValueError("no candidate blocks")
    _check_reiterable(batches)
    it = blocks
    if progress:
        from tqdm import tqdm
        it = tqdm(blocks, desc="block selection", unit="block")
    scores = {}
    for b in it:
        scores[b] = score_block(model, b, batches, int(model.num_classes), lr=lr, noise_std=noise_std,
                                clip=clip, max_batches=max_batches, proto_max_batches=proto_max_batches,
                                seed=seed, ignore_index=ignore_index)
    selected, scaled = select_from_scores(scores, threshold)
    settings = dict(threshold=threshold, lr=lr, noise_std=noise_std, clip=clip, max_batches=max_batches,
                    proto_max_batches=proto_max_batches, seed=seed)
    return BlockSelectionResult(selected, scores, scaled, threshold, settings)
