"""Source architectures, their builders and safe checkpoint loading."""
from .base import Normalize, TTAModel, check_model
from .registry import build_model, default_weights, list_models, register_model
from . import driveseg, signnet  # noqa: F401,E402  (register the embedded models)

__all__ = ["Normalize", "TTAModel", "check_model", "build_model", "list_models", "register_model",
           "default_weights"]
from . import public, efficientnet  # noqa: F401
