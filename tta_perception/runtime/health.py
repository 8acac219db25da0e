"""The statistics behind /diagnostics: counters, input rate and latency percentiles.

Pure Python and bounded in memory (fixed-size deques), so a 10-minute or 10-hour run cannot grow.
"""
from __future__ import annotations

import collections
import math
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


class StampGaps:
    """Frames lost before the node, estimated from the header stamps of those that arrive.

    A best-effort subscription loses large frames in DDS without any callback telling, so the only
    trace is a gap in the stamps. The camera's period is a low percentile (10th) of the recent
    stamp intervals, robust to the losses themselves (the true period shows whenever two frames in a
    row arrive); a gap of ``k`` periods then means ``k - 1`` frames lost. Gaps longer than both
    ``pause_s`` and ``pause_periods`` periods are a camera that paused, not losses; a stamp that goes back (a restarted driver, a
    bag that loops, several publishers) starts a new chain. Stamps that never change (drivers
    that leave them 0) give no estimate.
    """

    def __init__(self, history: int = 64, min_intervals: int = 8, pause_s: float = 2.0,
                 pause_periods: int = 10) -> None:
        self._intervals: collections.deque[float] = collections.deque(maxlen=history)
        self._min, self._pause_s, self._pause_periods = min_intervals, pause_s, pause_periods
        self._last: Optional[float] = None

    def period(self) -> float:
        """The camera's period in seconds as estimated now (NaN until enough frames)."""
        if len(self._intervals) < self._min:
            return float("nan")
        return percentile(self._intervals, 10)

    def add(self, stamp_s: float) -> int:
        """Register a frame's stamp; the frames estimated lost just before it."""
        last, self._last = self._last, stamp_s
        if last is None or stamp_s <= last:
            if last is not None and stamp_s < last:
                self._intervals.clear()  # a new chain: the old period may not hold
            return 0
        gap, period = stamp_s - last, self.period()
        if math.isnan(period) or period <= 0:  # not enough intervals yet
            if gap <= self._pause_s:
                self._intervals.append(gap)
            return 0
        if gap > max(self._pause_s, self._pause_periods * period):  # the camera paused
            return 0
        self._intervals.append(gap)
        return max(0, int(round(gap / period)) - 1)


class Health:
    """Counters, input rate and latency percentiles, thread-safe."""

    def __init__(self, rate_window_s: float = 5.0, latency_samples: int = 256) -> None:
        self._lock = threading.Lock()
        self._rate_window_s = rate_window_s
        self._arrivals: collections.deque[float] = collections.deque(maxlen=4096)
        self._latency: collections.deque[float] = collections.deque(maxlen=latency_samples)
        self._model_ms: collections.deque[float] = collections.deque(maxlen=latency_samples)
        self.counters: collections.Counter[str] = collections.Counter()
        self._gaps = StampGaps()
        self.values: dict[str, Any] = {}

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def set(self, **values: Any) -> None:
        with self._lock:
            self.values.update(values)

    def arrival(self, now: Optional[float] = None, stamp_s: Optional[float] = None) -> int:
        """A frame arrived (``stamp_s``: its header stamp, for the frames lost before the node);
        returns the frames estimated lost just before it (counted in ``lost_in_transport``)."""
        with self._lock:
            self.counters["frames_received"] += 1
            self._arrivals.append(time.monotonic() if now is None else now)
            lost = self._gaps.add(stamp_s) if stamp_s is not None else 0
            if lost:
                self.counters["lost_in_transport"] += lost
            return lost

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
            period = self._gaps.period()
            last = self._arrivals[-1] if self._arrivals else None
            out: dict[str, Any] = dict(self.counters)
            out.update(self.values)
        out["input_rate_hz"] = rate
        out["latency_p50_ms"] = percentile(lat, 50)
        out["latency_p95_ms"] = percentile(lat, 95)
        out["model_p50_ms"] = percentile(model, 50)
        out["stamp_period_ms"] = period * 1000.0
        out["last_frame_age_s"] = (now - last) if last is not None else float("nan")
        return out
