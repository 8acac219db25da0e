"""Helpers shared by ``prepare`` and ``bench``: model loading, on-disk caches, peak memory, machine."""
from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import os
import platform
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..devices import resolve_device  # noqa: F401  (re-exported for the bench modules)

DEFAULT_ARCH = {"cls": "signnet", "seg": "driveseg"}
EMBEDDED_ARCHS = ("signnet", "driveseg")
DEFAULT_CACHE = Path("runs/cache")
CACHE_VERSION = 1  # bump when a cached artefact's content changes for the same key


def cache_key(**params: Any) -> str:
    """Short stable hash of the parameters that determine a cached artefact."""
    blob = json.dumps({"v": CACHE_VERSION, **params}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def cached_npz(path: Path, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Load ``path`` or build the arrays, write them atomically and return them.

    Rendering and corrupting images is the slow part of a run (corruptions cost ~1-30 ms per
    image on CPU), and every method of every run sees the same data, so it is computed once.
    A file that cannot be read is rebuilt."""
    path = Path(path)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except Exception:  # truncated / foreign file: rebuild below
            pass
    data = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **data)
    os.replace(tmp, path)
    return data


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class LoadedModel:
    model: nn.Module
    arch: str
    weights_id: str     # identifies the weights (sha256 or 'random-init:...'), keys bundle caches
    weights_desc: str   # for people: where the weights came from


def load_model(task: str, arch: str | None = None, weights: str | os.PathLike | None = None, *,
               random_init: bool = False, num_classes: int | None = None, seed: int = 0,
               device: torch.device | str = "cpu") -> LoadedModel:
    """The source model: ``weights`` file, else the committed embedded weights, else (only with
    ``random_init``, for smoke tests) a seeded untrained model."""
    from ..models import build_model
    from ..models.checkpoint import CheckpointError, MANIFEST, load_checkpoint, read_manifest
    from ..paths import WEIGHTS_DIR

    arch = arch or DEFAULT_ARCH[task]
    kwargs = {} if num_classes is None or arch in EMBEDDED_ARCHS else {"num_classes": num_classes}
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist")
        if arch in EMBEDDED_ARCHS:
            model = load_checkpoint(path, arch=arch)
        else:
            model = build_model(arch, checkpoint=path, **kwargs)
        wid, desc = sha256_file(path), str(path)
    elif random_init:
        torch.manual_seed(seed)
        model = build_model(arch, **kwargs)
        wid, desc = f"random-init:{arch}:seed{seed}", f"untrained {arch} (random init, seed {seed})"
    elif arch.startswith("torchvision:"):  # torchvision's published weights (downloaded once by torch.hub)
        model = build_model(arch, **kwargs)
        wid, desc = arch, f"{arch} (torchvision's published weights)"
    else:
        if arch not in EMBEDDED_ARCHS:
            raise ValueError(f"model {arch!r} has no embedded weights: give --weights PATH")
        entry = read_manifest().get(arch)
        if entry is None:
            raise CheckpointError(f"no committed weights for {arch!r} ({MANIFEST} missing or without it): "
                                  "train them (`tta-perception train-source`), pass --weights, or use "
                                  "--random-init for a smoke run")
        path = WEIGHTS_DIR / entry["file"]
        model = load_checkpoint(path, arch=arch)
        wid, desc = entry.get("sha256") or sha256_file(path), f"committed {arch} ({path.name})"
    if task != model.task:
        raise ValueError(f"model {arch!r} is a {model.task} model, the task is {task}")
    return LoadedModel(model.to(device).eval(), arch, wid, desc)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------- memory
def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _release_freed_memory() -> None:
    """Give freed heap pages back to the OS so the next RSS baseline is not inflated by memory an
    earlier method freed but glibc kept (which would hide the next method's growth)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak extra memory while the block runs.

    CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation at entry (``kind`` =
    ``cuda_max_allocated``). CPU: resident-set growth over the RSS at entry, sampled every
    ``interval`` s from ``/proc/self/statm`` by a thread (``cpu_rss_growth_sampled``); tracemalloc
    cannot see PyTorch's allocator, and ``ru_maxrss`` never resets, so it is only the fallback
    (``cpu_maxrss_growth``) where /proc is missing. Sampling can miss spikes shorter than the
    interval; the number includes weights, teachers, optimiser state and activations."""

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device = torch.device(device)
        self.interval = interval
        self.kind = ""
        self.peak_mib = float("nan")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        _release_freed_memory()
        if self.device.type == "cuda":
            self.kind = "cuda_max_allocated"
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        base = _rss_bytes()
        if base is None:
            self.kind = "cpu_maxrss_growth"
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            return self
        self.kind = "cpu_rss_growth_sampled"
        self._base = self._peak = base

        def sample() -> None:
            while not self._stop.wait(self.interval):
                v = _rss_bytes()
                if v is not None and v > self._peak:
                    self._peak = v

        self._thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.kind == "cpu_maxrss_growth":
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            v = _rss_bytes()
            peak = max(self._peak, v or 0)
        self.peak_mib = max(0.0, (peak - self._base) / 2 ** 20)


# ----------------------------------------------------------------------------------- machine
def machine_info(device: torch.device) -> dict[str, Any]:
    """What a reader needs to judge the timings."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device), "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
