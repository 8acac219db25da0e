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


#: the sequence number an RMW reports when it has none (RMW_MESSAGE_INFO_SEQUENCE_NUMBER_UNSUPPORTED)
NO_SEQUENCE = 2**64 - 1
#: the shortest period a camera plausibly has (1 kHz): shorter stamp intervals are not a frame rate
#: (stamps that step by nanoseconds, several clocks on one topic) and never set one
MIN_PERIOD_S = 1e-3


class SequenceGaps:
    """Frames lost before the node, exactly, from one publisher's sequence numbers (the DDS writer's,
    which the RMW passes in the message info): a gap of ``k`` numbers is ``k - 1`` frames published and
    never delivered. Pauses and clock jumps do not move them, so nothing has to be guessed."""

    def __init__(self) -> None:
        self._last: Optional[int] = None

    def add(self, seq: int) -> int:
        last, self._last = self._last, seq
        if last is None or seq <= last:  # the first, or a writer that started again
            return 0
        return seq - last - 1


class StampGaps:
    """Frames lost before the node, estimated from the header stamps of those that arrive (where the
    RMW gives no sequence numbers: Humble).

    The camera's period is a low percentile (10th) of the recent stamp intervals, robust to the
    losses themselves (the true period shows whenever two frames in a row arrive); a gap of ``k``
    periods then means ``k - 1`` frames lost. Intervals shorter than ``MIN_PERIOD_S`` are no camera's
    and never set the period (several clocks on one topic, stamps in nanosecond steps); a gap longer
    than ``pause_periods`` periods is a pause or a jump of the clock (simulated time, a bag that
    skips), not losses; a stamp that goes back (a restarted driver, a bag that loops) starts a new
    chain. Stamps that never change (drivers that leave them 0) give no estimate.
    """

    def __init__(self, history: int = 64, min_intervals: int = 8, pause_periods: int = 5,
                 min_period_s: float = MIN_PERIOD_S) -> None:
        self._intervals: collections.deque[float] = collections.deque(maxlen=history)
        self._min, self._pause_periods, self._min_period = min_intervals, pause_periods, min_period_s
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
        if gap < self._min_period:  # no camera's interval: ignored
            return 0
        if math.isnan(period):  # not enough intervals yet: learn them (a pause is not one) ...
            if not self._intervals or gap <= self._pause_periods * min(self._intervals):
                self._intervals.append(gap)
            period = self.period()
            if math.isnan(period):
                return 0
            # ... and once the period is known, the frames lost while it was learnt count too
            return sum(max(0, int(round(g / period)) - 1) for g in self._intervals)
        if gap > self._pause_periods * period:  # the camera paused or its clock jumped
            return 0
        self._intervals.append(gap)
        return max(0, int(round(gap / period)) - 1)


class TransportLoss:
    """``lost_in_transport``: frames lost before the node, counted per source, since the stamps or
    sequence numbers of two publishers on one topic make no single chain.

    A source is the publisher (its GID, from the message info) where the RMW says who sent a frame,
    else the frame's ``frame_id``. Where the RMW passes the writer's sequence numbers (Iron and later
    with Fast DDS or Cyclone DDS) the count is exact (``SequenceGaps``); otherwise it is estimated from
    the stamps (``StampGaps``). At most ``max_sources`` sources are followed (the least recent is
    forgotten), so a topic with ever new publishers cannot grow the node.
    """

    def __init__(self, max_sources: int = 32) -> None:
        self._chains: collections.OrderedDict[Any, tuple[SequenceGaps, StampGaps]] = collections.OrderedDict()
        self._max = max_sources
        self._recent: Optional[StampGaps] = None

    def add(self, stamp_s: Optional[float], source: Any = None, seq: Optional[int] = None) -> int:
        """A frame from ``source`` with header stamp ``stamp_s`` and publication sequence number
        ``seq`` (None or ``NO_SEQUENCE`` where unknown); the frames lost just before it."""
        chains = self._chains.get(source)
        if chains is None:
            chains = self._chains[source] = (SequenceGaps(), StampGaps())
            while len(self._chains) > self._max:
                self._chains.popitem(last=False)
        else:
            self._chains.move_to_end(source)
        seqs, stamps = chains
        self._recent = stamps
        lost = 0
        if stamp_s is not None:
            lost = stamps.add(stamp_s)  # the period, for diagnostics, in either case
        if seq is not None and seq != NO_SEQUENCE and seq > 0:
            return seqs.add(int(seq))
        return lost

    def period(self) -> float:
        """The stamp period of the source heard last (NaN until known)."""
        return self._recent.period() if self._recent is not None else float("nan")


class Health:
    """Counters, input rate and latency percentiles, thread-safe."""

    def __init__(self, rate_window_s: float = 5.0, latency_samples: int = 256) -> None:
        self._lock = threading.Lock()
        self._rate_window_s = rate_window_s
        self._arrivals: collections.deque[float] = collections.deque(maxlen=4096)
        self._latency: collections.deque[float] = collections.deque(maxlen=latency_samples)
        self._model_ms: collections.deque[float] = collections.deque(maxlen=latency_samples)
        self.counters: collections.Counter[str] = collections.Counter()
        self._gaps = TransportLoss()
        self.values: dict[str, Any] = {}

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def set(self, **values: Any) -> None:
        with self._lock:
            self.values.update(values)

    def arrival(self, now: Optional[float] = None, stamp_s: Optional[float] = None, source: Any = None,
                seq: Optional[int] = None) -> int:
        """A frame arrived (``stamp_s``: its header stamp; ``source``/``seq``: its publisher and that
        publisher's sequence number, where known; see ``TransportLoss``); returns the frames lost
        just before it (counted in ``lost_in_transport``)."""
        with self._lock:
            self.counters["frames_received"] += 1
            self._arrivals.append(time.monotonic() if now is None else now)
            lost = self._gaps.add(stamp_s, source, seq) if (stamp_s is not None or seq is not None) else 0
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
