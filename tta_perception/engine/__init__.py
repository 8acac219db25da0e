"""Test-time adaptation engine (pure PyTorch, no ROS).

- ``build_method(name, model, cfg=None, **overrides) -> TTAMethod``; ``list_methods()``;
  ``register_method(name)``. Methods: source, norm, tent, eata, sar, cotta, rmt, dplot.
- ``TTAMethod``: ``step(x)`` predict+adapt, ``predict(x)``, ``reset()``, ``state_dict()``,
  ``load_state_dict()``, ``stats``.
- ``StreamingAdapter``: one frame at a time, inference never waits for adaptation.
- DPLOT phase A: ``block_selection``, ``warmup``, ``bundle``.
"""
from .base import TTAMethod
from .config import MethodConfig
from .registry import build_method, list_methods, method_class, register_method
from . import methods as _methods  # noqa: F401  (registers the built-in methods)
from .streaming import StreamingAdapter

__all__ = ["TTAMethod", "MethodConfig", "build_method", "list_methods", "method_class",
           "register_method", "StreamingAdapter"]
