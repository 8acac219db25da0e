"""Bounded bookkeeping for the node: the newest-frame mailbox and the statistics behind /diagnostics.

Pure Python and bounded in memory (fixed-size deques), so a 10-minute or 10-hour run cannot grow.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Optional


class LatestSlot:
    """A one-item mailbox: ``put`` replaces an item not yet taken (that frame is dropped).

    This is how a perception node stays current when the model is slower than the camera: the worker
    always gets the newest frame and queues never build up.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = False
        self._closed = False

    def put(self, item: Any) -> bool:
        """Store ``item``; return True when it replaced an unprocessed one (a drop)."""
        with self._cond:
            dropped = self._full
            self._item, self._full = item, True
            self._cond.notify()
            return dropped

    def take(self, timeout: Optional[float] = None) -> Any:
        """Newest item, or None after ``timeout`` seconds or once closed."""
        with self._cond:
            if not self._full and not self._closed:
                self._cond.wait(timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def clear(self) -> bool:
        with self._cond:
            had, self._item, self._full = self._full, None, False
            return had

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no NumPy needed; NaN when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, int(round(q / 100.0 * (len(ordered) - 1)))))
    return ordered[rank]


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
