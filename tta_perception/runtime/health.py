"""The statistics behind /diagnostics: counters, input rate and latency percentiles.

Pure Python and bounded in memory (fixed-size deques), so a 10-minute or 10-hour run cannot grow.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Optional, Sequence


def percentile(values: Sequence[float], q: float, interpolate: bool = False) -> float:
    """Percentile ``q`` (0-100) of ``values``, NaN when empty (no NumPy needed): nearest rank (the
    node's diagnostics), or linear between the closest ranks (``interpolate``: NumPy's default, the
    benchmarks')."""
    if not len(values):
        return float("nan")
    ordered = sorted(float(v) for v in values)
    pos = min(len(ordered) - 1, max(0.0, q / 100.0 * (len(ordered) - 1)))
    if not interpolate:
        return ordered[int(round(pos))]
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class Health:
    """Counters, input rate and latency percentiles, thread-safe."""

    def __init__(self, rate_window_s: float = 5.0, latency_samples: int = 256) -> None:
        self._lock = threading.Lock()
        self._rate_window_s = rate_window_s
        self._arrivals: collections.deque[float] = collections.deque(maxlen=4096)
        self._latency: collections.deque[float] = collections.deque(maxlen=latency_samples)
        self._model_ms: collections.deque[float] = collections.deque(maxlen=latency_samples)
        self.counters: collections.Counter[str] = collections.Counter()
        self.values: dict[str, Any] = {}

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def set(self, **values: Any) -> None:
        with self._lock:
            self.values.update(values)

    def arrival(self, now: Optional[float] = None) -> None:
        with self._lock:
            self.counters["frames_received"] += 1
            self._arrivals.append(time.monotonic() if now is None else now)

    def processed(self, latency_s: float, model_s: float) -> None:
        with self._lock:
            self.counters["frames_processed"] += 1
            self._latency.append(latency_s * 1000.0)
            self._model_ms.append(model_s * 1000.0)

    def reset_window(self) -> None:
        with self._lock:
            self._arrivals.clear()
            self._latency.clear()
            self._model_ms.clear()

    def snapshot(self, now: Optional[float] = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for t in self._arrivals if now - t <= self._rate_window_s]
            if len(recent) >= 2 and recent[-1] > recent[0]:
                rate = (len(recent) - 1) / (recent[-1] - recent[0])
            else:
                rate = 0.0
            lat, model = list(self._latency), list(self._model_ms)
            out: dict[str, Any] = dict(self.counters)
            out.update(self.values)
        out["input_rate_hz"] = rate
        out["latency_p50_ms"] = percentile(lat, 50)
        out["latency_p95_ms"] = percentile(lat, 95)
        out["model_p50_ms"] = percentile(model, 50)
        return out
