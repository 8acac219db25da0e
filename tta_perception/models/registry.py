"""Model builders by name, like ``torchvision.models.get_model``.

Two sources of names: the builders of this package (``@register_model``) and the architectures
other installed packages declare in the entry-point group ``tta_perception.architectures``
(``[project.entry-points."tta_perception.architectures"] my_net = "my_pkg.models:build"``). A name is
the only thing a run-time parameter can give: installing a package is what trusts its code, so no
parameter value ever imports a module that no installed package declared.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from torch import nn

ENTRY_POINT_GROUP = "tta_perception.architectures"

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_WEIGHTS: dict[str, Callable[[], Path]] = {}


def register_model(name: str, weights: Optional[Callable[[], Path]] = None
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make ``fn(**kwargs) -> TTAModel`` buildable as ``build_model(name, **kwargs)``.
    ``weights``: returns the local file of the architecture's published weights (raising
    ``FileNotFoundError`` that says what to install), loaded when no checkpoint is named."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        if weights is not None:
            _WEIGHTS[name] = weights
        return fn

    return wrap


def default_weights(name: str) -> Optional[Callable[[], Path]]:
    """The locator of ``name``'s installed published weights, if it declares one."""
    return _WEIGHTS.get(name)


def _entry_points() -> dict:
    """Name -> entry point of the architectures installed packages declare (read each call: cheap,
    and a package installed while a node runs is seen by its next reload)."""
    from importlib.metadata import entry_points

    try:
        found = entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # Python < 3.10 API
        found = entry_points().get(ENTRY_POINT_GROUP, [])
    return {ep.name: ep for ep in found if ep.name not in _BUILDERS}


def list_models() -> list[str]:
    return sorted(set(_BUILDERS) | set(_entry_points()))


def build_model(name: str, **kwargs) -> nn.Module:
    """Build an architecture by name (weights are loaded separately, see ``checkpoint``)."""
    builder = _BUILDERS.get(name)
    if builder is None:
        ep = _entry_points().get(name)
        if ep is None:
            raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
        builder = ep.load()  # the declaring package's module: trusted by its installation
    return builder(**kwargs)
