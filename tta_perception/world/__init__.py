"""The embedded driving world: procedural scenes, CARLA-style weather, sign crops, corruptions."""
from .classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE, colorize
from .weather import PRESETS, WeatherParameters, interpolate, preset, weather_from_spec

__all__ = ["CLASS_NAMES", "IGNORE_INDEX", "NUM_CLASSES", "PALETTE", "colorize", "PRESETS",
           "WeatherParameters", "interpolate", "preset", "weather_from_spec"]
