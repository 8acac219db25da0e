"""Rendered camera sequences: frames with ground truth under a weather schedule."""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .effects import compose
from .render import Renderer
from .schedule import Schedule, load_schedule
from .weather import WeatherParameters

DEFAULT_SIZE = (128, 256)  # (height, width) of the embedded camera


@dataclass
class Frame:
    index: int
    time: float            # seconds since the start of the sequence
    rgb: np.ndarray        # (H, W, 3) uint8
    labels: np.ndarray     # (H, W) uint8 class ids
    depth: np.ndarray      # (H, W) float32 metres
    weather: WeatherParameters
    domain: str


class SequenceRenderer:
    """Renders frame ``i`` of a schedule: a pure function of (schedule, world seed, size, view, i).
    ``view`` (``world.views``) picks the car's camera; every view of one (schedule, seed) is the
    same drive under the same weather at the same time."""

    def __init__(self, schedule: Schedule | str, seed: int | None = None,
                 size: tuple[int, int] = DEFAULT_SIZE, speed: float = 8.0, view: str = "front"):
        self.schedule = load_schedule(schedule) if isinstance(schedule, str) else schedule
        self.seed = self.schedule.seed if seed is None else int(seed)
        self.renderer = Renderer(self.seed, size[0], size[1], speed, view=view)

    def frame(self, index: int) -> Frame:
        t = self.schedule.frame_time(index)
        buf = self.renderer.render(t)
        weather = self.schedule.weather_at(t)
        rgb = compose(buf, weather, frame=index, noise_seed=self.seed)
        return Frame(index, t, rgb, buf.label, buf.depth, weather, self.schedule.domain_at(t))


_WORKER: SequenceRenderer | None = None


def _init_worker(schedule, seed, size, speed, view="front"):
    global _WORKER
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER = SequenceRenderer(schedule, seed, size, speed, view)


def _render_one(index: int) -> Frame:
    assert _WORKER is not None
    return _WORKER.frame(index)


def iter_sequence(schedule: Schedule | str, seed: int | None = None, size: tuple[int, int] = DEFAULT_SIZE,
                  start: int = 0, stop: int | None = None, stride: int = 1, workers: int = 1,
                  speed: float = 8.0, view: str = "front") -> Iterator[Frame]:
    """Frames ``start, start+stride, ... < stop`` (default: the schedule's length), in order.

    ``workers > 1`` renders in a process pool; the frames are identical to ``workers=1``.
    """
    sched = load_schedule(schedule) if isinstance(schedule, str) else schedule
    stop = sched.frames if stop is None else min(int(stop), sched.frames) if not sched.loop else int(stop)
    indices = range(int(start), stop, int(stride))
    if workers <= 1 or len(indices) < 16:
        renderer = SequenceRenderer(sched, seed, size, speed, view)
        for i in indices:
            yield renderer.frame(i)
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(workers, initializer=_init_worker, initargs=(sched, seed, size, speed, view)) as pool:
        yield from pool.imap(_render_one, indices, chunksize=8)
