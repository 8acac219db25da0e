"""Helpers shared by ``prepare`` and ``bench``: the model options, on-disk caches, peak memory, machine."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..atomic import atomic_write
from ..runtime.devices import sync  # noqa: F401  (the benchmarks time with it; its home is the runtime)
from ..runtime.memory import release_freed_memory, rss_mb

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
    atomic_write(path, lambda tmp: np.savez(tmp, **data), suffix=".npz")
    return data


def model_spec(task: str, arch: str | None = None, weights: str | os.PathLike | None = None,
               random_init: bool = False, allow_code: bool = False) -> dict[str, Any]:
    """``runtime.model_loader.load_model`` arguments for the benchmark's ``--model/--weights/
    --random-init``: the ``weights`` file loaded into ``arch``, else the committed embedded weights of
    ``arch`` (the task's embedded model by default), else (``random_init``, for smoke tests) a seeded
    untrained model, or torchvision's published weights for ``torchvision:<arch>``. ``allow_code``:
    ``arch`` may be ``module:function`` (``--allow-code-architecture``: the user's own builder)."""
    from ..runtime.model_loader import EMBEDDED_FOR_TASK

    arch = arch or EMBEDDED_FOR_TASK[task]
    code = {"allow_import": True} if allow_code else {}
    if weights is not None:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights file {weights} does not exist")
        return {"model": str(weights), "architecture": arch, **code}
    if random_init or arch.startswith("torchvision:") or ":" in arch:
        return {"architecture": arch, "random_init": random_init, **code}
    return {"model": arch, **code}


# ----------------------------------------------------------------------------------- memory
def _rss_bytes() -> int | None:
    mb = rss_mb()
    return None if mb != mb else int(mb * (1 << 20))


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
        release_freed_memory()
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

    def so_far_mib(self) -> float:
        """The peak while the block has run so far (a checkpoint of a long cell keeps it)."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.kind == "cpu_maxrss_growth":
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        else:
            peak = self._peak
        return max(0.0, (peak - self._base) / 2 ** 20)

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
