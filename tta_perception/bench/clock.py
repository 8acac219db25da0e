"""The simulated camera and adaptation worker of the real-time protocol (``bench/realtime.py`` has
the protocol, its costs and its report). Apart from them so that the stream runner, which drives the
clock, does not import the report side that imports the runner."""
from __future__ import annotations

import math
from typing import Any, Callable

EPS_MS = 1e-9


class RealtimeClock:
    """A simulated camera at ``hz`` and one adaptation worker with fixed per-frame / per-step costs.

    ``start_step()`` runs a step on the current window (True if it ran) without publishing it;
    ``publish()`` makes its weights the predicted ones. Call :meth:`arrive` before each frame's
    prediction and :meth:`request` for each adaptation request (``StreamingAdapter.on_request``).
    """

    def __init__(self, hz: float, predict_ms: float, step_ms: float | None, window: int,
                 start_step: Callable[[], bool], publish: Callable[[], None]):
        if not hz > 0:
            raise ValueError(f"--realtime: the camera rate must be > 0 Hz, got {hz}")
        self.hz = float(hz)
        self.period_ms = 1000.0 / self.hz
        self.predict_ms = float(predict_ms)
        self.step_ms = None if step_ms is None else float(step_ms)
        self.window = int(window)
        self._start_step, self._publish = start_step, publish
        self.frame = -1                      # position of the current frame in the stream
        self._predict_end = -math.inf
        self._busy_until = -math.inf
        self._unpublished = False
        self._since_reset = 0
        self.requests = 0
        self.steps = 0
        self.dropped_requests = 0
        self.late_frames = 0
        self.max_late_ms = 0.0
        self.step_frames: list[int] = []     # frame at which each step started
        self.visible_frames: list[int] = []  # first frame predicted with each step's weights
        self._covered: set[int] = set()

    def arrive(self) -> None:
        """The next frame arrives: publish every step finished by the time its prediction starts."""
        self.frame += 1
        self._since_reset += 1
        arrival = self.frame * self.period_ms
        start = max(arrival, self._predict_end)
        if start > arrival + EPS_MS:
            self.late_frames += 1
            self.max_late_ms = max(self.max_late_ms, start - arrival)
        if self._unpublished and self._busy_until <= start + EPS_MS:
            self._publish()
            self._unpublished = False
            self.visible_frames.append(self.frame)
        self._predict_end = start + self.predict_ms

    def request(self) -> bool:
        """An adaptation request after the current frame's prediction: step if the worker is idle."""
        self.requests += 1
        now = self._predict_end
        if self.step_ms is None or self._busy_until > now + EPS_MS:
            self.dropped_requests += 1
            return False
        if self._unpublished:  # finished since this frame's prediction started: publish it before
            self._publish()    # the next step changes the method's weights
            self._unpublished = False
            self.visible_frames.append(self.frame + 1)
        if not self._start_step():
            return False
        self.steps += 1
        self.step_frames.append(self.frame)
        lo = self.frame - min(self.window, self._since_reset) + 1
        self._covered.update(range(max(0, lo), self.frame + 1))
        self._busy_until = now + self.step_ms
        self._unpublished = True
        return True

    def reset(self) -> None:
        """The method was reset (reset_each_shift): a running step's weights are gone."""
        self._unpublished = False
        self._busy_until = -math.inf
        self._since_reset = 0

    def summary(self) -> dict[str, Any]:
        frames = self.frame + 1
        return {"hz": self.hz, "period_ms": self.period_ms, "predict_ms": self.predict_ms, "step_ms": self.step_ms,
                "step_periods": None if self.step_ms is None else self.step_ms / self.period_ms,
                "frames": frames, "requests": self.requests, "steps": self.steps,
                "dropped_requests": self.dropped_requests,
                "frames_adapted_on": len(self._covered),
                "fraction_adapted": len(self._covered) / frames if frames else float("nan"),
                "late_frames": self.late_frames, "max_late_ms": self.max_late_ms,
                "step_frames": self.step_frames[:2000]}
