"""Weather schedules: keyframes of time + weather, interpolated; shared by the embedded camera and
the CARLA weather driver.

YAML format (``config/sequences/*.yaml``)::

    name: clear2fog
    fps: 10            # frame rate of the rendered sequence
    frames: 1200       # length of the rendered sequence
    loop: false        # past the last keyframe: hold it (false) or start again (true)
    seed: 0            # world layout of the rendered sequence
    keyframes:
      - {time: 0,  preset: ClearNoon, domain: clear}
      - {time: 60, preset: ClearNoon, fog_density: 45, fog_distance: 10, domain: light_fog}
      - {time: 90, weather: {preset: HeavyFogNoon}, domain: fog}

A keyframe's weather is a CARLA preset name and/or explicit ``WeatherParameters`` fields (written
inline or under ``weather:``). ``domain`` names the condition for per-domain metrics; a keyframe
without one inherits the previous keyframe's, and a frame between two keyframes belongs to the
nearer one.

Between keyframes the weather is interpolated. Two keyframes at the same time make a step change:
the first one ends the ramp before it, the second holds from that instant on, e.g. a switch from
clear to rain at 18 s (``config/sequences/dynamic_abrupt.yaml``)::

      - {time: 18, preset: ClearNoon}
      - {time: 18, preset: HardRainNoon, domain: rain}
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from .weather import FIELD_RANGES, WeatherParameters, interpolate, weather_from_spec

_TOP_KEYS = {"name", "description", "fps", "frames", "loop", "seed", "keyframes"}


@dataclass(frozen=True)
class Keyframe:
    time: float
    weather: WeatherParameters
    domain: str


@dataclass(frozen=True)
class Schedule:
    name: str
    keyframes: tuple[Keyframe, ...]
    loop: bool = False
    fps: float = 10.0
    frames: int = 1200
    seed: int = 0
    description: str = ""

    @property
    def period(self) -> float:
        return self.keyframes[-1].time

    @property
    def domains(self) -> tuple[str, ...]:
        """Domain names in order of first appearance."""
        seen: dict[str, None] = {}
        for k in self.keyframes:
            seen.setdefault(k.domain, None)
        return tuple(seen)

    def _locate(self, t: float) -> tuple[int, float]:
        """Index of the keyframe segment containing ``t`` and the blend factor inside it."""
        t = float(t)
        if self.loop and self.period > 0:
            t = t % self.period
        times = [k.time for k in self.keyframes]
        if t <= times[0]:
            return 0, 0.0
        if t >= times[-1]:
            return len(times) - 1, 0.0
        i = bisect.bisect_right(times, t) - 1
        span = times[i + 1] - times[i]
        return i, (t - times[i]) / span if span > 0 else 1.0

    def weather_at(self, t: float) -> WeatherParameters:
        i, alpha = self._locate(t)
        if alpha == 0.0:
            return self.keyframes[i].weather
        return interpolate(self.keyframes[i].weather, self.keyframes[i + 1].weather, alpha)

    def domain_at(self, t: float) -> str:
        i, alpha = self._locate(t)
        return self.keyframes[i + 1 if alpha >= 0.5 else i].domain

    def frame_time(self, index: int) -> float:
        return index / self.fps

    @property
    def step_times(self) -> tuple[float, ...]:
        """Times (within one period) of the instant switches: two keyframes at the same time."""
        k = self.keyframes
        return tuple(a.time for a, b in zip(k, k[1:])
                     if a.time == b.time and (a.weather != b.weather or a.domain != b.domain))

    def is_step_between(self, t0: float, t1: float) -> bool:
        """Whether an instant switch happens in ``(t0, t1]`` (looping schedules repeat theirs)."""
        for s in self.step_times:
            if not self.loop or self.period <= 0:
                if t0 < s <= t1:
                    return True
                continue
            k = math.ceil((t0 - s) / self.period)
            while s + k * self.period <= t0:
                k += 1
            if s + k * self.period <= t1:
                return True
        return False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "custom") -> "Schedule":
        if not isinstance(data, Mapping):
            raise ValueError(f"schedule {name!r}: expected a mapping at the top level")
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise ValueError(f"schedule {name!r}: unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
        raw = data.get("keyframes")
        if not raw:
            raise ValueError(f"schedule {name!r}: needs a non-empty 'keyframes' list")
        keyframes: list[Keyframe] = []
        domain = "default"
        for i, kf in enumerate(raw):
            if not isinstance(kf, Mapping) or "time" not in kf:
                raise ValueError(f"schedule {name!r}: keyframe {i} needs a 'time' (seconds)")
            kf = dict(kf)
            time = float(kf.pop("time"))
            if keyframes and time < keyframes[-1].time:
                raise ValueError(f"schedule {name!r}: keyframe {i} time {time} goes back in time")
            domain = str(kf.pop("domain", domain))
            spec: dict[str, Any] = dict(kf.pop("weather", {}) or {})
            if "preset" in kf:
                spec.setdefault("preset", kf.pop("preset"))
            bad = sorted(k for k in kf if k not in FIELD_RANGES)
            if bad:
                raise ValueError(f"schedule {name!r}: keyframe {i} has unknown key(s) {bad}")
            spec.update(kf)
            try:
                weather = weather_from_spec(spec)
            except ValueError as err:
                raise ValueError(f"schedule {name!r}: keyframe {i}: {err}") from None
            keyframes.append(Keyframe(time, weather, domain))
        fps = float(data.get("fps", 10.0))
        frames = int(data.get("frames", round(keyframes[-1].time * fps) or 1))
        if fps <= 0 or frames <= 0:
            raise ValueError(f"schedule {name!r}: fps and frames must be positive")
        return cls(name=str(data.get("name", name)), keyframes=tuple(keyframes), loop=bool(data.get("loop", False)),
                   fps=fps, frames=frames, seed=int(data.get("seed", 0)),
                   description=str(data.get("description", "")))


def sequences_dir() -> Path:
    from ..paths import config_path
    return config_path("sequences")


def list_sequences() -> list[str]:
    return sorted(p.stem for p in sequences_dir().glob("*.yaml"))


def load_schedule(name_or_path: str | Path) -> Schedule:
    """A shipped sequence by name (``dynamic``) or any schedule YAML by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = sequences_dir() / f"{name_or_path}.yaml"
        if not path.exists():
            raise ValueError(f"unknown sequence {str(name_or_path)!r}; shipped: {', '.join(list_sequences())}"
                             " (or give a path to a schedule YAML)")
    if not path.exists():
        raise FileNotFoundError(f"schedule file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"schedule file {path} is not valid YAML: {err}") from None
    return Schedule.from_dict(data, name=path.stem)
