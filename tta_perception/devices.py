"""One rule for ``--device`` / the ``device`` parameter across the commands and the benchmark."""
from __future__ import annotations


def resolve_device(name: str):
    """``auto`` -> CUDA when present, else CPU; an explicit CUDA device without CUDA is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available (use --device cpu or auto)")
    return dev
