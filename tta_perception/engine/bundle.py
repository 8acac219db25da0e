"""DPLOT phase-A bundle: selected blocks, their scores, warmed student/teacher weights, metadata.

Stored with ``torch.save`` as plain dicts / lists / tensors / numbers / strings only, and read
with ``torch.load(weights_only=True)`` so a bundle can never execute code on load.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import weights_only
from ..atomic import atomic_torch_save

BUNDLE_FORMAT = "tta_perception.dplot_bundle"
BUNDLE_VERSION = 1


class BundleError(ValueError):
    """A file that is not a usable bundle (corrupt, wrong format, wrong model)."""


@dataclass
class Bundle:
    selected_blocks: list[str]
    scores: dict[str, float] = field(default_factory=dict)          # raw mean prototype cosine per block
    scaled_scores: dict[str, float] = field(default_factory=dict)   # min-max scaled
    student_state: dict[str, torch.Tensor] | None = None            # warmed-up student (incl. BN buffers)
    teacher_state: dict[str, torch.Tensor] | None = None            # warmed-up EMA teacher
    prototypes: torch.Tensor | None = None                          # (C, D) source class prototypes
    metadata: dict[str, Any] = field(default_factory=dict)          # model name, task, classes, settings

    def check_model(self, model: nn.Module) -> None:
        """Raise BundleError if the weights / blocks do not fit ``model``."""
        names = dict(model.named_modules())
        missing = [b for b in self.selected_blocks if b not in names]
        if missing:
            raise BundleError(f"bundle blocks not in the model: {missing}")
        own = model.state_dict()
        for key in ("student_state", "teacher_state"):
            sd = getattr(self, key)
            if sd is None:
                continue
            if set(sd) != set(own):
                diff = sorted(set(sd) ^ set(own))[:5]
                raise BundleError(f"bundle {key} does not match the model's state_dict keys (e.g. {diff})")
            bad = [k for k in sd if tuple(sd[k].shape) != tuple(own[k].shape)]
            if bad:
                raise BundleError(f"bundle {key} has wrong shapes for {bad[:5]}")
        nc = self.metadata.get("num_classes")
        if nc is not None and getattr(model, "num_classes", nc) != nc:
            raise BundleError(f"bundle is for {nc} classes, model has {model.num_classes}")


def _plain(sd: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    return None if sd is None else {k: v.detach().cpu().clone() for k, v in sd.items()}


def save_bundle(bundle: Bundle, path: str | os.PathLike) -> None:
    """Write ``bundle`` atomically (temp file + rename)."""
    meta = dict(bundle.metadata)
    meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
    obj = {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
        "selected_blocks": [str(b) for b in bundle.selected_blocks],
        "scores": {str(k): float(v) for k, v in bundle.scores.items()},
        "scaled_scores": {str(k): float(v) for k, v in bundle.scaled_scores.items()},
        "student_state": _plain(bundle.student_state),
        "teacher_state": _plain(bundle.teacher_state),
        "prototypes": None if bundle.prototypes is None else bundle.prototypes.detach().cpu().clone(),
        "metadata": meta,
    }
    atomic_torch_save(obj, path)


def load_bundle(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Bundle:
    """Read a bundle; FileNotFoundError / BundleError with the reason when it cannot be used."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DPLOT bundle not found: {path} (create it with `tta-perception prepare`)")
    try:
        obj = weights_only.load(path, map_location=map_location)
    except weights_only.WeightsOnlyError as e:  # truncated file, not a torch file, pickled objects
        raise BundleError(f"cannot read DPLOT bundle {path}: {e.reason}") from None
    if not isinstance(obj, dict) or obj.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not a DPLOT bundle (format marker missing)")
    if obj.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle version {obj.get('version')} not supported (expected {BUNDLE_VERSION})")
    try:
        blocks = list(obj["selected_blocks"])
        if not all(isinstance(b, str) for b in blocks):
            raise TypeError("selected_blocks must be strings")
        for key in ("student_state", "teacher_state"):
            sd = obj.get(key)
            if sd is not None and not (isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())):
                raise TypeError(f"{key} must map names to tensors")
        protos = obj.get("prototypes")
        if protos is not None and not isinstance(protos, torch.Tensor):
            raise TypeError("prototypes must be a tensor")
        return Bundle(selected_blocks=blocks, scores=dict(obj.get("scores", {})),
                      scaled_scores=dict(obj.get("scaled_scores", {})),
                      student_state=obj.get("student_state"), teacher_state=obj.get("teacher_state"),
                      prototypes=protos, metadata=dict(obj.get("metadata", {})))
    except (KeyError, TypeError) as e:
        raise BundleError(f"{path}: malformed DPLOT bundle: {e}") from e


def default_bundle_path(arch: str) -> "Path":
    """Where ``tta-perception prepare`` writes a bundle by default, and where the node and the
    benchmark look for one (relative to the working directory); ``module:function`` names are made
    file-name safe."""
    from pathlib import Path

    return Path("runs/prepare") / f"{arch.replace(':', '_').replace('/', '_')}_dplot.bundle"


def resolve_bundle(bundle: Bundle | str | os.PathLike | None) -> Bundle | None:
    if bundle is None or isinstance(bundle, Bundle):
        return bundle
    return load_bundle(bundle)


def apply_bundle(model, bundle: Bundle | str | os.PathLike | None) -> Bundle | None:
    """Resolve ``bundle``, check it was made for ``model`` and load its warmed-up student weights
    (what the mean-teacher methods do first in ``setup``); the bundle, or None without one."""
    b = resolve_bundle(bundle)
    if b is not None:
        b.check_model(model)
        if b.student_state is not None:
            model.load_state_dict(b.student_state)
    return b
