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

:func:`contract_rules` checks all of it with one small forward, so a network that breaks it is
refused when it is loaded (``runtime.model_loader``), not deep inside a benchmark; ``tta-perception
check-model`` prints each rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from difflib import get_close_matches
from numbers import Integral
from typing import Optional, Sequence

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


@dataclass(frozen=True)
class Rule:
    """One rule of the contract, checked: ``tta-perception check-model`` prints each, the loader
    refuses a model with the first that fails."""

    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


#: the probe's input when the model declares no ``input_size`` (small: the loader runs it on every load)
PROBE_SIZE = {"seg": (64, 128), "cls": (32, 32)}
BLOCKS_LISTED = 12


def block_like_modules(model: nn.Module) -> list[str]:
    """Names a ``candidate_blocks`` entry can take: callable sub-modules that hold a BatchNorm (the
    adapted parameters), shallowest first (the blocks a user names, then their parts), in the model's
    order; plain containers (ModuleList/Dict) are left out."""
    out = [name for name, m in model.named_modules()
           if name and next(m.children(), None) is not None and not isinstance(m, (nn.ModuleList, nn.ModuleDict))
           and any(isinstance(c, nn.modules.batchnorm._BatchNorm) for c in m.modules())]
    return sorted(out, key=lambda name: name.count("."))


def _blocks_rule(model: nn.Module) -> Rule:
    names = dict(model.named_modules())
    blocks = tuple(model.candidate_blocks)
    missing = [b for b in blocks if b not in names]
    if not missing:
        return Rule("candidate_blocks", True, f"{len(blocks)} block(s) resolve" if blocks else
                    "none declared (DPLOT then has no block to select)")
    valid = block_like_modules(model)
    hint = get_close_matches(str(missing[0]), valid, n=1)
    more = f" … (+{len(valid) - BLOCKS_LISTED} more)" if len(valid) > BLOCKS_LISTED else ""
    return Rule("candidate_blocks", False,
                f"{', '.join(map(repr, missing))} not module(s) of {type(model).__name__}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; block-like modules (holding BatchNorm): {', '.join(valid[:BLOCKS_LISTED]) or 'none'}{more}")


def _static_rules(model: nn.Module) -> list[Rule]:
    """The rules that need no forward pass (every adaptation method checks these on construction)."""
    absent = [a for a in ("task", "num_classes", "candidate_blocks", "forward_features", "classify")
              if not hasattr(model, a)]
    if absent:
        return [Rule("attributes", False, f"{type(model).__name__} is not a TTAModel: missing "
                     + ", ".join(map(repr, absent)))]
    rules = [Rule("attributes", True, "task, num_classes, candidate_blocks, forward_features, classify"),
             Rule("task", model.task in TASKS, repr(model.task) if model.task in TASKS else
                  f"must be one of {TASKS}, got {model.task!r}")]
    n, names = model.num_classes, tuple(getattr(model, "class_names", ()) or ())
    if not isinstance(n, Integral) or isinstance(n, bool) or n < 1:
        rules.append(Rule("num_classes", False, f"must be a positive int, got {n!r}"))
    elif names and len(names) != n:
        rules.append(Rule("num_classes", False, f"{n}, but class_names has {len(names)} names"))
    else:
        rules.append(Rule("num_classes", True, f"{n}" + ("" if names else " (no class_names: ids are shown)")))
    return rules + [_blocks_rule(model)]


def _shape_rule(name: str, out, expected: tuple, why: str) -> Rule:
    """``expected`` holds ints, or None where any size fits."""
    if not torch.is_tensor(out):
        return Rule(name, False, f"returned a {type(out).__name__}, not a tensor ({why})")
    shape = tuple(out.shape)
    fits = len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))
    want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
    return Rule(name, fits, f"{shape}" if fits else f"{shape}, expected {want}: {why}")


def probe_size(model: nn.Module) -> tuple[int, int]:
    """The model's declared ``input_size`` (a segmentation one halved down to the probe's area: fully
    convolutional, and halving keeps the sides' divisibility by the network's stride), else the
    probe's default."""
    declared = getattr(model, "input_size", None)
    if not declared:
        return PROBE_SIZE[model.task]
    h, w = int(declared[0]), int(declared[1])
    limit = PROBE_SIZE["seg"][0] * PROBE_SIZE["seg"][1]
    while model.task == "seg" and h * w > limit and h % 2 == 0 and w % 2 == 0:
        h, w = h // 2, w // 2
    return h, w


def _forward_rules(model: nn.Module, size: tuple[int, int]) -> list[Rule]:
    from ..runtime.errors import one_line  # stdlib only: the one-line rule of every refusal

    seg, c = model.task == "seg", model.num_classes
    h, w = size
    try:
        ref = next(iter(model.parameters()), None)
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))  # not the global RNG
        if ref is not None:
            x = x.to(ref.device, ref.dtype if ref.dtype.is_floating_point else torch.float32)
        feats = model.forward_features(x)
    except Exception as err:  # user code: report, do not crash the check
        return [Rule("forward_features", False, f"raised {type(err).__name__}: {one_line(err)}")]
    rules = [_shape_rule("forward_features", feats, (1, None, None, None) if seg else (1, None),
                         "(B, D, h, w) for segmentation" if seg else "(B, D) for classification")]
    if not rules[0].ok:
        return rules
    try:
        head = model.classify(feats)
    except Exception as err:
        return rules + [Rule("classify", False, f"raised {type(err).__name__}: {one_line(err)}")]
    rules.append(_shape_rule("classify", head, (1, c, None, None) if seg else (1, c),
                             f"{c} = num_classes logits" + (" per pixel, (B, C, h, w)" if seg else ", (B, C)")))
    try:  # TTAModel's own forward is classify(forward_features(x)) at the input size: no second pass
        logits = seg_logits(head, x) if type(model).forward is TTAModel.forward and seg else \
            head if type(model).forward is TTAModel.forward else model(x)
    except Exception as err:
        return rules + [Rule("logits", False, f"forward raised {type(err).__name__}: {one_line(err)}")]
    rules.append(_shape_rule("logits", logits, (1, c, h, w) if seg else (1, c),
                             f"segmentation logits (B, C, H, W) at the input size {h}x{w} (upsample in "
                             "forward, or leave forward to TTAModel)" if seg else
                             "classification logits (B, C)"))
    return rules


def contract_rules(model: nn.Module, size: Optional[tuple[int, int]] = None,
                   num_classes: Optional[int] = None) -> list[Rule]:
    """Every rule of the contract above, the shapes checked with one forward of a (1, 3, H, W) image
    (``size``, default :func:`probe_size`) in eval mode under ``no_grad``, so BatchNorm statistics
    and gradients stay untouched; each module's train/eval mode is restored. ``num_classes``: the
    count the builder was asked for (the data's). The forward rules run only when the others hold."""
    rules = _static_rules(model)
    if num_classes is not None and rules[0].ok:
        rules.append(Rule("classes asked for", model.num_classes == num_classes,
                          f"{num_classes}" if model.num_classes == num_classes else
                          f"the builder was asked for {num_classes} classes, the model has {model.num_classes}"))
    if not all(r.ok for r in rules):
        return rules
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            rules += _forward_rules(model, tuple(size) if size else probe_size(model))
    finally:
        for m, training in modes:
            m.training = training
    return rules


class ContractError(ValueError):
    """A model that breaks the contract; the message names the rule, in one line."""

    def __init__(self, rule: Rule):
        super().__init__(str(rule))
        self.rule = rule


def check_contract(model: nn.Module, size: Optional[tuple[int, int]] = None,
                   num_classes: Optional[int] = None) -> None:
    """Raise :class:`ContractError` with the first rule of :func:`contract_rules` that fails."""
    failed = next((r for r in contract_rules(model, size, num_classes) if not r.ok), None)
    if failed is not None:
        raise ContractError(failed)


def check_model(model: nn.Module) -> None:
    """Raise a clear error if ``model`` breaks the contract's rules that need no forward pass (cheap:
    every adaptation method runs it on construction; the loader runs :func:`check_contract`)."""
    failed = next((r for r in _static_rules(model) if not r.ok), None)
    if failed is not None:
        raise (TypeError if failed.name == "attributes" else ContractError)(
            failed.detail if failed.name == "attributes" else failed)
