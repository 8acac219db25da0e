"""Method registry: ``build_method(name, model, cfg=None, **overrides)``."""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from torch import nn

from .base import TTAMethod

_METHODS: dict[str, type[TTAMethod]] = {}
T = TypeVar("T", bound=type[TTAMethod])


def register_method(name: str) -> Callable[[T], T]:
    """Class decorator: make a TTAMethod subclass buildable by ``name``."""

    def wrap(cls: T) -> T:
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        if not (isinstance(cls, type) and issubclass(cls, TTAMethod)):
            raise TypeError(f"{cls!r} is not a TTAMethod subclass")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def list_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type[TTAMethod]:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(list_methods())}")
    return _METHODS[name]


def build_method(name: str, model: nn.Module, cfg: Any = None, **overrides: Any) -> TTAMethod:
    """Wrap ``model`` (a TTAModel, adapted in place) in method ``name``.

    ``cfg``: None, a dict, or the method's config dataclass; ``overrides``: config keys or the
    method's resources (e.g. ``bundle=`` for dplot/rmt, ``fisher_batches=`` for eata).
    """
    return method_class(name)(model, cfg, **overrides)
