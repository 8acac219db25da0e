"""Typed, validated per-method configuration.

Each method has a dataclass deriving from :class:`MethodConfig`; :func:`make_config` builds it from
``None`` / a dict / an instance plus keyword overrides, rejects unknown keys with the list of the
allowed ones, coerces the obvious (int -> float, list -> tuple) and runs ``validate()``.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Mapping


@dataclass
class MethodConfig:
    """Settings every method shares (engine-level: safety and streaming support)."""

    # Number of optimisation steps per batch (reference framework OPTIM.STEPS = 1).
    steps: int = 1
    # Reset to the source state before every batch (reference MODEL.EPISODIC = False).
    episodic: bool = False
    # Momentum of the EMA of *test* BN statistics kept in the running buffers; only the streaming
    # single-frame prediction reads them (PyTorch's default BN momentum, which the reference's
    # BN-EMA variant also uses).
    bn_momentum: float = 0.1
    # Safety (issue 3 §3, ours; not in the paper): a non-finite loss or parameter skips the update
    # and restores the last good state.
    nan_guard: bool = True
    # Collapse detection (ours): if, over the last `collapse_window` adaptation steps, one class takes
    # at least `collapse_max_fraction` of the predictions (pixels for segmentation), reset to the
    # source state. Set collapse_reset=False for paper-protocol numbers (the paper has no reset).
    collapse_reset: bool = True
    collapse_window: int = 8
    collapse_max_fraction: float = 0.95

    def validate(self) -> None:
        _check(self.steps >= 1, "steps must be >= 1")
        _check(0.0 < self.bn_momentum <= 1.0, "bn_momentum must be in (0, 1]")
        _check(self.collapse_window >= 1, "collapse_window must be >= 1")
        _check(0.0 < self.collapse_max_fraction <= 1.0, "collapse_max_fraction must be in (0, 1]")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def check_optimizer(name: str) -> None:
    _check(name in ("adam", "sgd"), f"optimizer must be 'adam' or 'sgd', got {name!r}")


def by_num_classes(table: tuple[tuple[int, float], ...], num_classes: int) -> float:
    """A per-dataset official value chosen by the number of classes: the value of the smallest
    configured dataset with at least ``num_classes`` classes (``table``: (classes, value) in
    ascending order; beyond the largest, its value). E.g. 12 sign classes take CIFAR100's value,
    10 take CIFAR10's."""
    for classes, value in table:
        if num_classes <= classes:
            return value
    return table[-1][1]


def config_keys(cls: type[MethodConfig]) -> list[str]:
    return [f.name for f in fields(cls)]


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"config key {name!r} must be a bool, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"config key {name!r} must be an int, got {value!r}")
    if hint is float and not isinstance(value, float):
        raise ValueError(f"config key {name!r} must be a number, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise ValueError(f"config key {name!r} must be a string, got {value!r}")
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(name, value, inner[0])
        return value
    if origin is tuple:
        if isinstance(value, (list, tuple)):
            elem = args[0] if args else Any
            if elem in (float,):
                return tuple(float(v) for v in value)
            return tuple(value)
        raise ValueError(f"config key {name!r} must be a list/tuple, got {value!r}")
    return value


def make_config(cls: type[MethodConfig], cfg: Any = None, **overrides: Any) -> MethodConfig:
    """Build ``cls`` from ``cfg`` (None, dict or ``cls`` instance) and ``overrides``."""
    allowed = config_keys(cls)
    if cfg is None:
        values: dict[str, Any] = {}
    elif isinstance(cfg, cls):
        values = dataclasses.asdict(cfg)
    elif isinstance(cfg, MethodConfig):
        raise ValueError(f"expected a {cls.__name__}, got a {type(cfg).__name__}")
    elif isinstance(cfg, Mapping):
        values = dict(cfg)
    else:
        raise ValueError(f"cfg must be None, a dict or a {cls.__name__}, got {type(cfg).__name__}")
    values.update(overrides)
    unknown = sorted(k for k in values if k not in allowed)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} for {cls.__name__}; allowed: {sorted(allowed)}")
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
    out = cls(**values)
    out.validate()
    return out
