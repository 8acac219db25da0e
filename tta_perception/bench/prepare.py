"""DPLOT phase A on source data: block selection + mean-teacher warm-up -> bundle.

Source data: the embedded world's clear-weather training renders (``training.render_cls_set`` /
``render_seg_set``, world seeds >= 1000, the distribution the source models were trained on, as the
paper uses the CIFAR/ImageNet training set), or a public dataset's source loader.

Amounts. The official code scores each candidate block with one epoch over the source training set
(CIFAR: 50,000 images in batches of 128, i.e. 391 entropy steps per block; the 2001-batch cap never
binds) and warms the mean teacher on 50,000 samples. On a 2-core CPU that is hours, so the defaults
use a smaller source set (``DEFAULTS``); the protocol itself (one epoch of entropy minimisation per
block, prototypes over the same set, Adam 1e-3, noise 0.5, threshold 0.75, linear warm-up ramp,
EMA 0.999) is unchanged. ``OFFICIAL`` restores the official amounts; every difference is listed in
the bundle's metadata (``deviations``).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..engine.bundle import default_bundle_path  # noqa: F401  (prepare's default output, re-exported)
from .common import DEFAULT_CACHE, cache_key, cached_npz

# per task: source samples (block selection + prototypes), source batch size, warm-up samples
DEFAULTS = {
    "cls": dict(samples=2048, batch_size=64, warmup_samples=4096),
    "seg": dict(samples=128, batch_size=8, warmup_samples=256),
}
OFFICIAL = {  # dplot.py: batch 128 (CIFAR) / 64 (ImageNet), one epoch of the 50k training set, 50k warm-up
    "cls": dict(samples=50_000, batch_size=128, warmup_samples=50_000),
    "seg": dict(samples=2000, batch_size=8, warmup_samples=50_000),  # seg: train-source's set size
}
QUICK = {  # smoke runs only
    "cls": dict(samples=64, batch_size=32, warmup_samples=64),
    "seg": dict(samples=8, batch_size=4, warmup_samples=8),
}
WHY_SMALLER = ("the official amounts take hours on a 2-core CPU; the per-block protocol (one epoch over "
               "the source set) is kept, the source set is smaller")
WHY_WARMUP = "50,000 warm-up samples take hours on a 2-core CPU; same loss, ramp and EMA on fewer samples"


@dataclass
class PrepareSettings:
    task: str
    samples: int
    batch_size: int
    warmup_samples: int
    selection_steps: int | None = None   # entropy steps per block; None = one epoch (official)
    threshold: float = 0.75
    noise_std: float = 0.5
    lr: float = 1e-3
    warmup_lr: float = 1e-3
    clip: bool = False
    seed: int = 0
    source: str = "world"                # world | a public dataset name
    data_root: str | None = None
    size: tuple[int, int] = (128, 256)   # seg world renders (H, W)
    profile: str = "default"             # default | official | quick | custom

    @classmethod
    def for_task(cls, task: str, profile: str = "default", **overrides: Any) -> "PrepareSettings":
        table = {"default": DEFAULTS, "official": OFFICIAL, "quick": QUICK}[profile]
        base = dict(table[task])
        if profile == "official" and overrides.get("source") == "imagenet_c":
            base["batch_size"] = 64  # dplot.py: 64 for ImageNet
        given = {k: v for k, v in overrides.items() if v is not None}
        custom = any(k in base and given[k] != base[k] for k in given)
        base.update(given)
        return cls(task=task, profile=profile + ("+custom" if custom else ""), **base)

    def key(self, weights_id: str, arch: str) -> str:
        return cache_key(kind="bundle", arch=arch, weights=weights_id, **asdict(self))

    def deviations(self) -> list[str]:
        """Differences from the official phase-A amounts, with the reason."""
        off = dict(OFFICIAL[self.task])
        if self.source == "imagenet_c":
            off["batch_size"] = 64
        out = []
        if self.samples < off["samples"]:
            out.append(f"block selection / prototypes on {self.samples} source samples instead of "
                       f"{off['samples']} (one epoch each, as official): {WHY_SMALLER}")
        if self.batch_size != off["batch_size"]:
            out.append(f"source batch size {self.batch_size} instead of {off['batch_size']}: more entropy steps "
                       "per block from the smaller source set")
        if self.warmup_samples < off["warmup_samples"]:
            out.append(f"mean-teacher warm-up on {self.warmup_samples} samples instead of "
                       f"{off['warmup_samples']}: {WHY_WARMUP}")
        if self.selection_steps is not None:
            out.append(f"{self.selection_steps} entropy steps per block instead of one epoch")
        if self.task == "seg":
            out.append("segmentation: the paper has no segmentation phase A; per-pixel entropy and per-pixel "
                       "class prototypes (on the feature map, labels downsampled to it) are our extension")
        return out


# ------------------------------------------------------------------------------------ source data
def world_source_arrays(task: str, n: int, seed: int = 0, size=(128, 256), cache_dir: Path = DEFAULT_CACHE,
                        progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``n`` labelled clear-weather training renders (uint8 NHWC, labels), cached on disk."""
    from ..training import render_cls_set, render_seg_set

    if task == "cls":
        key = cache_key(kind="source", task=task, n=n, seed=seed)

        def build():
            x, y = render_cls_set(n, seed, progress=progress and n >= 5000)
            return {"x": x, "y": y.astype(np.int64)}
    else:
        key = cache_key(kind="source", task=task, n=n, seed=seed, size=list(size))

        def build():
            x, y = render_seg_set(n, seed, size=tuple(size), progress=progress)
            return {"x": x, "y": y}
    d = cached_npz(Path(cache_dir) / "source" / f"{task}_n{n}_s{seed}_{key}.npz", build)
    return d["x"], d["y"]


class ArrayBatches:
    """Re-iterable labelled batches ``(x float (B,3,H,W) in [0,1], y int64)`` in a fixed order.

    Every pass yields the same batches (so the prototypes before and after a block's entropy steps
    see the same data); ``length`` > one epoch cycles over the data again."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, length: int | None = None):
        if len(x) == 0:
            raise ValueError("no source samples")
        self.x, self.y, self.batch_size = x, y, int(batch_size)
        self.epoch_batches = -(-len(x) // self.batch_size)
        self.length = self.epoch_batches if length is None else int(length)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from ..runtime.preprocess import to_tensor

        for i in range(self.length):
            j = (i % self.epoch_batches) * self.batch_size
            xb = to_tensor(self.x[j:j + self.batch_size])
            yb = torch.from_numpy(np.ascontiguousarray(self.y[j:j + self.batch_size]).astype(np.int64))
            yield xb, yb


class CappedLoader:
    """A public dataset's SourceLoader cut to ``length`` batches per pass (re-iterable)."""

    def __init__(self, loader, length: int | None = None):
        self.loader = loader
        self.epoch_batches = len(loader)
        self.length = self.epoch_batches if length is None else int(length)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        n = 0
        while n < self.length:
            for batch in self.loader:
                if n >= self.length:
                    return
                yield batch
                n += 1


def source_batches(s: PrepareSettings, cache_dir: Path = DEFAULT_CACHE, progress: bool = True,
                   length: int | None = None):
    """The source batches phase A and EATA's Fisher use."""
    if s.source == "world":
        x, y = world_source_arrays(s.task, s.samples, s.seed, s.size, cache_dir, progress)
        return ArrayBatches(x, y, s.batch_size, length)
    from ..datasets import build_source_loader

    if not s.data_root:
        raise ValueError(f"--data-root is required for source dataset {s.source!r}")
    square = s.size[0] if s.size and s.size[0] == s.size[1] else None
    loader = build_source_loader(s.source, s.data_root, batch_size=s.batch_size, num_samples=s.samples,
                                 shuffle=False, seed=s.seed,
                                 image_size=square if s.source in ("folder", "imagenet_c") else None)
    return CappedLoader(loader, length)


# ------------------------------------------------------------------------------------ phase A
@dataclass
class PrepareResult:
    bundle: Any
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def run_prepare(model: torch.nn.Module, s: PrepareSettings, *, arch: str, weights_id: str, weights_desc: str = "",
                cache_dir: Path = DEFAULT_CACHE, progress: bool = True,
                log: Callable[[str], None] = print) -> PrepareResult:
    """Phase A on ``model`` (left untouched) with settings ``s``; returns the bundle (not saved)."""
    from ..engine.phase_a import prepare_bundle

    t0 = time.perf_counter()
    src = source_batches(s, cache_dir, progress)
    epoch = src.epoch_batches
    steps = s.selection_steps or epoch
    batches = src if steps <= epoch else source_batches(s, cache_dir, False, length=steps)
    what = (f"{s.samples} clear-weather training renders (world seeds >= 1000)" if s.source == "world"
            else f"{s.samples} samples of the {s.source} source data ({s.data_root})")
    log(f"source data: {what}, batch {s.batch_size}: {epoch} batches per epoch")
    log(f"block selection: {len(model.candidate_blocks)} candidate blocks x {steps} entropy steps "
        f"(Adam {s.lr:g}, noise {s.noise_std:g}, threshold {s.threshold:g}); warm-up {s.warmup_samples} samples")
    torch.manual_seed(s.seed)
    bundle = prepare_bundle(
        model, batches, model_name=arch, threshold=s.threshold, selection_lr=s.lr, noise_std=s.noise_std,
        clip=s.clip, max_batches=steps, proto_max_batches=epoch, warmup_samples=s.warmup_samples,
        warmup_lr=s.warmup_lr, seed=s.seed, progress=progress,
        metadata={"weights_id": weights_id, "weights": weights_desc, "prepare": asdict(s),
                  "deviations": s.deviations(), "source_data": what})
    secs = time.perf_counter() - t0
    bundle.metadata["prepare_seconds"] = round(secs, 1)
    return PrepareResult(bundle, secs, {"epoch_batches": epoch, "selection_steps": steps})


def rmt_warmup_state(model: torch.nn.Module, s: PrepareSettings, *, arch: str, weights_id: str, batch_size: int,
                     bundle=None, cache_dir: Path = DEFAULT_CACHE, progress: bool = True,
                     log: Callable[[str], None] = print) -> tuple[dict, dict[str, Any]]:
    """RMT's own warm-up (official ``rmt.py``) for ``model`` at the TEST batch size, computed once per
    model, source data, batch size and RMT settings and cached under ``cache_dir/rmt_warmup``: the
    warmed student, teacher and the Adam state that adaptation starts with. Same source set as phase
    A (``s``), same number of warm-up samples (``s.warmup_samples``; official 50,000)."""
    import copy
    from dataclasses import replace

    from ..atomic import atomic_torch_save
    from ..engine import build_method
    from ..engine.methods.rmt import RMTConfig
    from .. import weights_only

    contrastive = bundle is not None and bundle.prototypes is not None
    cfg = asdict(RMTConfig(warmup_samples=s.warmup_samples))
    key = cache_key(kind="rmt_warmup", arch=arch, weights=weights_id, contrastive=contrastive, rmt=cfg,
                    source=asdict(replace(s, batch_size=int(batch_size))))
    path = Path(cache_dir) / "rmt_warmup" / f"{arch}_bs{batch_size}_{key}.pt"
    steps = max(1, s.warmup_samples // int(batch_size))
    info = {"path": str(path), "batch_size": int(batch_size), "samples": s.warmup_samples, "steps": steps,
            "source_samples": s.samples}
    if path.is_file():
        try:
            state = weights_only.load(path)
            return state, {**info, "how": "cached"}
        except weights_only.WeightsOnlyError:
            pass  # rebuilt below
    log(f"RMT warm-up at the test batch size {batch_size}: {steps} steps over {s.samples} source samples "
        f"({s.warmup_samples} warm-up samples), cached at {path}")
    t0 = time.perf_counter()
    batches = source_batches(replace(s, batch_size=int(batch_size)), cache_dir, progress)
    m = build_method("rmt", copy.deepcopy(model), warmup="own", warmup_samples=s.warmup_samples,
                     warmup_batches=batches, bundle=bundle, collapse_reset=False, nan_guard=False,
                     progress=progress)
    state = m.warmup_state()
    atomic_torch_save(state, path)
    secs = time.perf_counter() - t0
    log(f"RMT warm-up done in {secs:.0f} s")
    return state, {**info, "how": f"computed now ({secs:.0f} s)"}


def score_table(bundle) -> str:
    """Per-block raw score, min-max scaled score and selection mark."""
    lines = [f"  {'block':<22} {'score (cos)':>12} {'scaled':>8}  selected"]
    for b, v in bundle.scores.items():
        mark = "*" if b in bundle.selected_blocks else ""
        lines.append(f"  {b:<22} {v:>12.6f} {bundle.scaled_scores.get(b, float('nan')):>8.3f}  {mark}")
    return "\n".join(lines)


def cached_bundle_path(cache_dir: Path, arch: str, key: str) -> Path:
    return Path(cache_dir) / "bundles" / f"{arch}_{key}.bundle"
