"""CARLA-style weather: the fields of ``carla.WeatherParameters`` and CARLA's preset names.

The same parameter set drives the embedded renderer and, in CARLA mode, ``world.set_weather``, so
one schedule file describes a drive in both. Field ranges and meanings follow the CARLA Python API
docs (cloudiness/precipitation/... 0–100, sun_altitude_angle −90…90 with night below 0, fog_distance
in metres). Preset values follow CARLA's ``WeatherParameters`` presets (0.9.13+): noon presets at sun
altitude 45°, sunset at 15°, night at −90°; the night presets carry CARLA's night haze (fog 60 from
75 m). Where we were unsure of a CARLA value we kept the documented intent of the preset.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Mapping

# field -> (min, max); CARLA clamps the same way.
FIELD_RANGES: dict[str, tuple[float, float]] = {
    "cloudiness": (0.0, 100.0),
    "precipitation": (0.0, 100.0),
    "precipitation_deposits": (0.0, 100.0),
    "wind_intensity": (0.0, 100.0),
    "sun_azimuth_angle": (-360.0, 360.0),
    "sun_altitude_angle": (-90.0, 90.0),
    "fog_density": (0.0, 100.0),
    "fog_distance": (0.0, 10000.0),
    "fog_falloff": (0.0, 10.0),
    "wetness": (0.0, 100.0),
    "scattering_intensity": (0.0, 100.0),
    "mie_scattering_scale": (0.0, 10.0),
    "rayleigh_scattering_scale": (0.0, 10.0),
    "dust_storm": (0.0, 100.0),
}


@dataclass(frozen=True)
class WeatherParameters:
    """Mirror of ``carla.WeatherParameters`` (same field names, same units)."""

    cloudiness: float = 5.0
    precipitation: float = 0.0
    precipitation_deposits: float = 0.0
    wind_intensity: float = 10.0
    sun_azimuth_angle: float = -1.0
    sun_altitude_angle: float = 45.0
    fog_density: float = 2.0
    fog_distance: float = 0.75
    fog_falloff: float = 0.1
    wetness: float = 0.0
    scattering_intensity: float = 1.0
    mie_scattering_scale: float = 0.03
    rayleigh_scattering_scale: float = 0.0331
    dust_storm: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or value != value:  # NaN check without numpy
                raise ValueError(f"weather field {f.name!r} must be a number, got {value!r}")
            lo, hi = FIELD_RANGES[f.name]
            if not lo <= value <= hi:
                raise ValueError(f"weather field {f.name!r}={value} outside [{lo}, {hi}]")
            object.__setattr__(self, f.name, float(value))

    def replace(self, **changes: float) -> "WeatherParameters":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @property
    def is_night(self) -> bool:
        return self.sun_altitude_angle < 0.0

    def describe(self) -> str:
        """Short human label of the dominant condition, e.g. for plots and logs."""
        parts = []
        if self.sun_altitude_angle < 0:
            parts.append("night")
        elif self.sun_altitude_angle < 20:
            parts.append("sunset")
        if self.precipitation >= 20:
            parts.append("rain")
        if self.fog_density >= 20 and self.sun_altitude_angle >= 0:
            parts.append("fog")
        if not parts:
            parts.append("cloudy" if self.cloudiness >= 50 else "clear")
        return "+".join(parts)


def _preset(cloud, prec, deposits, wind, altitude, fog=2.0, fog_dist=0.75, fog_falloff=0.1, wet=0.0):
    return WeatherParameters(
        cloudiness=cloud, precipitation=prec, precipitation_deposits=deposits, wind_intensity=wind,
        sun_azimuth_angle=-1.0, sun_altitude_angle=altitude, fog_density=fog, fog_distance=fog_dist,
        fog_falloff=fog_falloff, wetness=wet,
    )


_NOON, _SUNSET, _NIGHT = 45.0, 15.0, -90.0
_CONDITIONS = {  # name -> (cloudiness, precipitation, deposits, wind, day fog density)
    "Clear": (5.0, 0.0, 0.0, 10.0, 2.0),
    "Cloudy": (60.0, 0.0, 0.0, 10.0, 3.0),
    "Wet": (5.0, 0.0, 50.0, 10.0, 3.0),
    "WetCloudy": (60.0, 0.0, 50.0, 10.0, 3.0),
    "MidRainy": (60.0, 60.0, 60.0, 60.0, 3.0),
    "HardRain": (100.0, 100.0, 90.0, 100.0, 7.0),
    "SoftRain": (20.0, 30.0, 50.0, 30.0, 3.0),
}

PRESETS: dict[str, WeatherParameters] = {}
for _cond, (_c, _p, _d, _w, _f) in _CONDITIONS.items():
    PRESETS[f"{_cond}Noon"] = _preset(_c, _p, _d, _w, _NOON, fog=_f)
    # CARLA spells one sunset preset "MidRainSunset" (not "MidRainySunset").
    PRESETS[("MidRainSunset" if _cond == "MidRainy" else f"{_cond}Sunset")] = _preset(
        _c, _p, _d, _w, _SUNSET, fog=_f)
    PRESETS[f"{_cond}Night"] = _preset(_c, _p, _d, _w, _NIGHT, fog=60.0, fog_dist=75.0, fog_falloff=1.0)
# Not a CARLA preset: the heavy fog the CarlaTTA clear2fog sequence ends in.
PRESETS["HeavyFogNoon"] = _preset(60.0, 0.0, 0.0, 10.0, _NOON, fog=90.0, fog_dist=0.0, fog_falloff=0.1,
                                  wet=10.0)


def preset(name: str) -> WeatherParameters:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown weather preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def weather_from_spec(spec: str | Mapping[str, Any] | WeatherParameters) -> WeatherParameters:
    """A preset name, a dict ``{preset: Name, <field>: value, ...}`` or explicit fields."""
    if isinstance(spec, WeatherParameters):
        return spec
    if isinstance(spec, str):
        return preset(spec)
    if not isinstance(spec, Mapping):
        raise ValueError(f"weather must be a preset name or a mapping of fields, got {spec!r}")
    spec = dict(spec)
    base = preset(spec.pop("preset")) if "preset" in spec else WeatherParameters()
    unknown = sorted(set(spec) - set(FIELD_RANGES))
    if unknown:
        raise ValueError(f"unknown weather field(s) {unknown}; allowed: {', '.join(FIELD_RANGES)}")
    return base.replace(**{k: float(v) for k, v in spec.items()})


def interpolate(a: WeatherParameters, b: WeatherParameters, alpha: float) -> WeatherParameters:
    """Linear blend of every field, ``alpha`` in [0, 1]."""
    alpha = min(max(float(alpha), 0.0), 1.0)
    # clamp: (1 - a)·x + a·y can land one rounding step outside the range (e.g. -90.00000000000001)
    return WeatherParameters(**{k: min(max((1 - alpha) * getattr(a, k) + alpha * getattr(b, k), lo), hi)
                                for k, (lo, hi) in FIELD_RANGES.items()})
