"""Device choice, one rule for every command, the benchmark and the node: ``auto`` is CUDA when
present, else the CPU; an explicit CUDA device that does not exist is refused."""
from __future__ import annotations

import re
from typing import Optional

from .errors import ConfigError

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(name: str, label: str = "device"):
    """``torch.device`` for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; ``label`` names the option or
    parameter in the refusal (``--device``, ``parameter 'device'``)."""
    import torch

    if not DEVICE_RE.match(name or ""):
        raise ConfigError(f"{label} must be one of auto, cpu, cuda, cuda:N; got {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda" if available else "cpu")
    if not available:
        raise ConfigError(f"{label} is {name!r} but CUDA is not available (use auto or cpu)")
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"{label} is {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device(name)


def fallback_warning(name: str, device) -> Optional[str]:
    """What to tell the user when ``auto`` ended up on the CPU."""
    if name == "auto" and str(device) == "cpu":
        return "device 'auto': CUDA not available, running on CPU"
    return None


def is_cuda_oom(err: BaseException) -> bool:
    from ..engine.model_utils import is_cuda_oom as check

    return check(err)


def sync(device) -> None:
    """Wait for the work queued on a CUDA ``device``, so a timer around it measures the work itself."""
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.synchronize(device)
