"""Source architectures, their builders and safe checkpoint loading."""
from .base import Normalize, TTAModel, check_model
from .registry import build_model, list_models, register_model

__all__ = ["Normalize", "TTAModel", "check_model", "build_model", "list_models", "register_model"]
