"""Checkpoints: written as plain tensors + metadata, read with ``torch.load(weights_only=True)``
(never unpickle code), with errors that name the file and the offending keys."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import weights_only
from ..atomic import atomic_write
from ..files import open_regular, problem
from ..paths import WEIGHTS_DIR
from .registry import build_model

MANIFEST = WEIGHTS_DIR / "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not match the architecture."""


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open_regular(path, "checkpoint") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(model: nn.Module, path: str | Path, arch: str, meta: dict[str, Any] | None = None) -> Path:
    """Atomically write ``{'arch', 'state_dict', 'meta'}`` (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"arch": arch, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "meta": json.loads(json.dumps(meta or {}))}
    return atomic_write(path, lambda tmp: torch.save(payload, str(tmp)), mode=0o644)  # shared data


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict; a plain state dict is wrapped as ``{'state_dict': ...}``."""
    path = Path(path)
    reason = problem(path, "checkpoint")
    if reason:
        raise CheckpointError(reason)
    try:
        data = weights_only.load(path)
    except weights_only.WeightsOnlyError as err:  # truncated zip, random bytes, pickled code
        raise CheckpointError(f"checkpoint {path} is corrupt or not a weights-only torch file: "
                              f"{err.reason}") from None
    if isinstance(data, dict) and "state_dict" in data:
        return data
    if isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values()):
        return {"state_dict": data}
    raise CheckpointError(f"checkpoint {path} holds no state dict")


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> nn.Module:
    """Strict load with a readable message listing missing / unexpected / mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shape:
        def short(keys):
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {short(unexpected)}")
        if shape:
            parts.append("shape mismatch: " + short([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                     for k in shape]))
        raise CheckpointError(f"{source} does not match {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def load_checkpoint(path: str | Path, model: nn.Module | None = None, arch: str | None = None) -> nn.Module:
    """Load ``path`` into ``model`` (or into a new ``arch`` / the architecture recorded in the file)."""
    data = read_checkpoint(path)
    if model is None:
        arch = arch or data.get("arch")
        if not arch:
            raise CheckpointError(f"checkpoint {path} records no architecture: pass arch=")
        model = build_model(str(arch))
    return load_state(model, data["state_dict"], source=f"checkpoint {path}")


def read_manifest() -> dict[str, Any]:
    if not MANIFEST.exists():
        return {}
    return json.loads(MANIFEST.read_text())


def load_source_model(name: str = "driveseg", device: str | torch.device = "cpu", verify: bool = True) -> nn.Module:
    """The committed clear-weather source model ``name`` (see ``weights/manifest.json``), in eval mode."""
    manifest = read_manifest()
    if name not in manifest:
        raise CheckpointError(f"no embedded weights named {name!r}; available: {', '.join(sorted(manifest)) or 'none'}"
                              " (train them with `tta-perception train-source`)")
    entry = manifest[name]
    path = WEIGHTS_DIR / entry["file"]
    if verify and path.is_file() and sha256_of(path) != entry["sha256"]:
        raise CheckpointError(f"checkpoint {path} does not match the sha256 in {MANIFEST} (modified or corrupt)")
    model = load_checkpoint(path, arch=entry["arch"])
    return model.to(device).eval()


def default_bundle(name: str) -> Path | None:
    """The committed DPLOT phase-A bundle of embedded model ``name`` (``tta-perception prepare``
    output recorded in the manifest), or None when the package ships none."""
    entry = read_manifest().get(name, {})
    bundle = entry.get("dplot_bundle", {}).get("file")
    path = WEIGHTS_DIR / bundle if bundle else None
    return path if path is not None and path.is_file() else None
