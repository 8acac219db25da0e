"""Checkpoints inside one streaming cell of ``bench --stream`` (one method on one stream for one
seed), so a long drive survives an interruption and continues where it stopped.

Every ``checkpoint_every`` frames (at the first chunk boundary at or after each multiple) one file
per cell, ``<dir>/<stream>__<method>__s<seed>.pt``, is written atomically (``atomic.py``). It holds
only tensors, numbers, strings, lists and dicts (read back with ``weights_only.load``): the
adapter's ``state_dict()`` and ``stream_state()`` (weights, teachers, optimisers, the frame window,
the frames since the last request), every scorer's state, the frames and chunks done, the RNG
states (torch, CUDA, NumPy, ``random``), the frame path's times and counts, the setup time, and a
fingerprint of everything that must match on resume. A resumed cell loads it and skips the chunks
already done, so its mIoU equals an uninterrupted run's. What cannot be saved is the optical-flow
chain (OpenCV state and the previous image): the first frame after a resume has no motion link,
so its flicker misses one link (counted as a break) and a fused ('+tf') output restarts there.

The runner (``runner.run_method``) calls this module; it never imports the runner back.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..atomic import atomic_torch_save

FORMAT = "tta_perception.bench.cell_checkpoint/1"


class CellInterrupted(RuntimeError):
    """Raised by ``RunOptions.stop_after_frames`` (tests: an interruption after a checkpoint)."""


def safe_name(text: str) -> str:
    """A stream or method name as a file-name part."""
    return "".join(c if c.isalnum() or c in "+-_.@" else "_" for c in str(text))


def cell_name(stream: str, method: str, seed: int) -> str:
    return f"{safe_name(stream)}__{safe_name(method)}__s{int(seed)}"


def checkpoint_path(directory: str | Path, stream: str, method: str, seed: int) -> Path:
    return Path(directory) / f"{cell_name(stream, method, seed)}.pt"


def fingerprint(method: str, stream: Any, opts: Any) -> dict[str, str]:
    """What must be the same for a checkpoint to continue this cell (values as strings, in the order
    a refusal names the first difference). Threads count: the numbers depend on them."""
    fp = {"method": method, "stream": stream.name, "frames": str(stream.n_samples), "seed": str(opts.seed)}
    for key in sorted(stream.info):
        fp[f"stream {key}"] = json.dumps(stream.info[key], sort_keys=True, default=str)
    fp.update({"window": str(opts.window), "adapt_every": str(opts.adapt_every), "background": str(opts.background),
               "predict_mode": opts.predict_mode, "bn_stats": opts.bn_stats, "safety": str(opts.safety),
               "temporal_fusion": repr(float(opts.temporal_fusion)),
               "fusion_modes": ",".join(opts.fusion_modes) if opts.temporal_fusion else "",
               "flow_preset": opts.flow_preset, "weights": opts.weights_id or "",
               "quality": "off" if opts.quality_model is None else opts.quality_model or "uncalibrated",
               "quality_source_every": str(opts.quality_source_every),
               "device": torch.device(opts.device).type, "threads": str(torch.get_num_threads())})
    return fp


# ----------------------------------------------------------------------------------------- RNG
def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random generator a cell draws from, as tensors / lists (``weights_only`` safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": int(version), "internal": [int(v) for v in internal],
                        "gauss_next": None if gauss_next is None else float(gauss_next)}}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------- the frame path
def path_state(path: Any) -> dict[str, Any]:
    """The frame path's times and each camera's flow / fusion counts (not the chain itself)."""
    cams = {}
    for name, cam in path.cameras.items():
        ch = cam.chain
        cams[name] = {"links": int(ch.links), "breaks": dict(ch.breaks), "total_ms": float(ch.total_ms),
                      "valid_sum": float(ch.valid_sum),
                      "fusions": {m: {k: getattr(f, k) for k in ("frames", "fused_frames", "past_sum", "total_ms")}
                                  for m, f in cam.fusions.items()}}
    guard = path.guard.state_dict() if path.guard is not None else None
    reference = path.reference.state_dict() if path.reference is not None else None
    return {"seconds": dict(path.seconds), "cameras": cams, "guard": guard, "reference": reference}


def load_path_state(path: Any, state: dict[str, Any]) -> None:
    """Counts and times carried over; each chain starts anew (its first frame is a break)."""
    path.seconds.update(state["seconds"])
    if (path.guard is None) != (state.get("guard") is None):
        raise ValueError("checkpoint of a run " + ("without" if path.guard is not None else "with") + " the collapse guard")
    if path.guard is not None:
        path.guard.load_state_dict(state["guard"])
    if path.reference is not None:
        path.reference.load_state_dict(state.get("reference"))
    for name, saved in state["cameras"].items():
        cam = path.camera(name)
        ch = cam.chain
        ch.links, ch.total_ms, ch.valid_sum = saved["links"], saved["total_ms"], saved["valid_sum"]
        ch.breaks.clear()
        ch.breaks.update(saved["breaks"])
        for mode, counts in saved["fusions"].items():
            if mode in cam.fusions:
                for k, v in counts.items():
                    setattr(cam.fusions[mode], k, v)


# ----------------------------------------------------------------------------------- the file
def load(path: Path, expected: dict[str, str]) -> Optional[dict[str, Any]]:
    """The checkpoint at ``path`` if there is one; a one-line ``ValueError`` for a file that cannot
    be read or was made with other settings (never silently started over)."""
    from .. import weights_only

    if not path.is_file():
        return None
    start_over = "pass --overwrite (or delete it) to start this cell over"
    try:
        state = weights_only.load(path)
    except weights_only.WeightsOnlyError as err:
        raise ValueError(f"checkpoint {path} cannot be read ({err.reason}); {start_over}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("fingerprint"), dict):
        raise ValueError(f"checkpoint {path} is not a bench cell checkpoint; {start_over}")
    old = state["fingerprint"]
    for key in [*expected, *(k for k in old if k not in expected)]:
        if old.get(key) != expected.get(key):
            was, now = (_short(v) for v in (old.get(key), expected.get(key)))
            raise ValueError(f"checkpoint {path} was made with {key} {was}, this run has {now}: rerun with the "
                             f"same settings, or {start_over}")
    return state


def _short(value: Optional[str], limit: int = 60) -> str:
    if value is None:
        return "(none)"
    return value if len(value) <= limit else value[: limit - 1] + "…"


def save(path: Path, *, fingerprint: dict[str, str], frames: int, chunks: int, adapter: Any, frame_path: Any,
         scorers: dict[str, Any], detected: list[int], setup_s: float, peak_mem_mib: float, wall_s: float,
         device: torch.device) -> None:
    """Write one cell's state atomically (the adapter idle: no step half done)."""
    adapter.wait_idle()
    state = {"format": FORMAT, "fingerprint": dict(fingerprint), "frames": int(frames), "chunks": int(chunks),
             "adapter": adapter.state_dict(), "stream": adapter.stream_state(),
             "scorers": {key: sc.state_dict() for key, sc in scorers.items()}, "detected": [int(d) for d in detected],
             "rng": rng_state(device), "path": path_state(frame_path), "setup_s": float(setup_s),
             "peak_mem_mib": float(peak_mem_mib), "wall_s": float(wall_s)}
    atomic_torch_save(state, path)


def restore(state: dict[str, Any], *, adapter: Any, frame_path: Any, scorers: dict[str, Any],
            detected: list[int]) -> None:
    """Put a loaded checkpoint back into a freshly built cell; the RNG last (building drew from it)."""
    adapter.load_state_dict(state["adapter"])
    adapter.load_stream_state(state["stream"])
    if set(state["scorers"]) != set(scorers):
        raise ValueError(f"checkpoint scores rows {sorted(state['scorers'])}, this cell {sorted(scorers)}")
    for key, sc in scorers.items():
        sc.load_state_dict(state["scorers"][key])
    detected[:] = list(state["detected"])
    load_path_state(frame_path, state["path"])
    set_rng_state(state["rng"])


# ------------------------------------------------------------------------------- progress lines
class ProgressLines:
    """One log line per interval (checkpoint interval, else weather cycle) for runs without a
    progress bar (``--no-progress``, or a detached run writing to a log):
    ``dplot seed 0 on dynamic: cycle 3/26, 3,600/31,200 frames, 12.3 min, ETA 1:40:00``."""

    def __init__(self, label: str, total: int, every: int, per_cycle: float | None, done: int = 0,
                 wall_before: float = 0.0, log: Callable[[str], None] = lambda m: print(m, flush=True)):
        self.label, self.total, self.every, self.per_cycle = label, int(total), int(every), per_cycle
        self.start_frames, self.wall_before, self.log = int(done), float(wall_before), log
        self.t0 = time.perf_counter()
        self.next = (done // self.every + 1) * self.every if self.every > 0 else math.inf

    def elapsed(self) -> float:
        """Seconds of this cell, earlier sessions included."""
        return self.wall_before + time.perf_counter() - self.t0

    def update(self, frames: int) -> None:
        if frames < self.next or frames >= self.total:
            return
        self.next = (frames // self.every + 1) * self.every
        now = time.perf_counter() - self.t0
        rate = (frames - self.start_frames) / now if now > 0 else 0.0
        eta = (self.total - frames) / rate if rate > 0 else float("nan")
        cycle = ""
        if self.per_cycle:
            n_cycles = max(1, round(self.total / self.per_cycle))
            cycle = f"cycle {min(n_cycles, int(frames / self.per_cycle + 1e-9))}/{n_cycles}, "
        self.log(f"{self.label}: {cycle}{frames:,}/{self.total:,} frames, {self.elapsed() / 60:.1f} min, "
                 f"ETA {_hms(eta)}")


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class CellCheckpoints:
    """A streaming cell's checkpoints: :meth:`resume` once the cell is built, :meth:`after_chunk` at
    every chunk boundary (saves at the first boundary at or after each multiple of ``every``)."""

    def __init__(self, file: Path, fingerprint: dict[str, str], every: int, total: int, *, adapter: Any,
                 frame_path: Any, scorers: dict[str, Any], detected: list[int], device: torch.device):
        if every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 frame, got {every}")
        self.file, self.fingerprint, self.every, self.total = Path(file), fingerprint, int(every), int(total)
        self.adapter, self.frame_path, self.scorers, self.detected = adapter, frame_path, scorers, detected
        self.device = torch.device(device)
        self.next = self.every
        self.saves = 0

    def resume(self) -> dict[str, Any]:
        """Load this cell's checkpoint into the cell, if there is one: ``frames``, ``chunks``,
        ``setup_s``, ``peak_mem_mib``, ``wall_s`` of the work already done ({} without one)."""
        state = load(self.file, self.fingerprint)
        if state is None:
            return {}
        restore(state, adapter=self.adapter, frame_path=self.frame_path, scorers=self.scorers,
                detected=self.detected)
        self.next = (state["frames"] // self.every + 1) * self.every
        return {k: state[k] for k in ("frames", "chunks", "setup_s", "peak_mem_mib", "wall_s")}

    def after_chunk(self, frames: int, chunks: int, *, setup_s: float, peak_mem_mib: float, wall_s: float) -> bool:
        """Save when a multiple of ``every`` was reached (not after the last frame); True if saved."""
        if frames < self.next or frames >= self.total:
            return False
        save(self.file, fingerprint=self.fingerprint, frames=frames, chunks=chunks, adapter=self.adapter,
             frame_path=self.frame_path, scorers=self.scorers, detected=self.detected, setup_s=setup_s,
             peak_mem_mib=peak_mem_mib, wall_s=wall_s, device=self.device)
        self.next = (frames // self.every + 1) * self.every
        self.saves += 1
        return True
