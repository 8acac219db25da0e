"""Topic names and the weather JSON shared by the weather nodes, the bags and the evaluator.

Pure Python (no rclpy): ``make-bag`` and ``replay`` write and read the same payloads without ROS, so a
bag recorded from ``weather_camera`` and one written by ``make-bag`` look alike to the evaluator.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Optional

# Relative names (a node namespace or a remap moves them); in the root namespace these are
# /camera/image_raw, /camera/ground_truth/class_ids and /weather.
IMAGE_TOPIC = "camera/image_raw"
TRUTH_TOPIC = "camera/ground_truth/class_ids"
WEATHER_TOPIC = "weather"
# What the carla-ros-bridge publishes for the ego camera (bgra8).
CARLA_IMAGE_TOPIC = "/carla/ego_vehicle/rgb_front/image"

WEATHER_FORMAT = "tta_perception.weather/1"


def view_topic(view: str, topic: str) -> str:
    """A camera topic of one view of several: ``camera/image_raw`` of ``front`` -> ``front/image_raw``
    (the camera's namespace becomes the view's; '' keeps the single camera's topic)."""
    return f"{view}/{topic.split('/', 1)[1]}" if view else topic


def absolute(topic: str) -> str:
    return topic if topic.startswith("/") else "/" + topic


def stamp_to_ns(sec: int, nanosec: int) -> int:
    return int(sec) * 1_000_000_000 + int(nanosec)


def ns_to_stamp(ns: int) -> tuple[int, int]:
    ns = int(ns)
    return ns // 1_000_000_000, ns % 1_000_000_000


def weather_payload(stamp_ns: int, weather: Any, domain: str, *, schedule: str = "", time: float = math.nan,
                    frame: Optional[int] = None, source: str = "embedded", applied: bool = True,
                    frame_id: str = "", extra: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The weather message: a ``WeatherParameters`` (or a field dict) with the stamp it belongs to.

    ``std_msgs/String`` has no header, so the stamp travels inside the JSON; the evaluator uses it to
    put each ground-truth frame in its weather phase (``domain``).
    """
    fields = weather.as_dict() if hasattr(weather, "as_dict") else dict(weather)
    sec, nanosec = ns_to_stamp(stamp_ns)
    out: dict[str, Any] = {
        "format": WEATHER_FORMAT, "stamp": {"sec": sec, "nanosec": nanosec}, "frame_id": frame_id,
        "source": source, "schedule": schedule, "time": None if math.isnan(time) else round(float(time), 6),
        "frame": frame, "domain": str(domain), "applied": bool(applied),
        "description": weather.describe() if hasattr(weather, "describe") else "",
        "weather": {k: round(float(v), 6) for k, v in fields.items()},
    }
    if extra:
        out.update(extra)
    return out


def weather_json(*args: Any, **kwargs: Any) -> str:
    return json.dumps(weather_payload(*args, **kwargs), sort_keys=True)


def parse_weather(text: str) -> tuple[Optional[int], dict[str, Any]]:
    """(stamp in ns or None, payload) of a weather message; ValueError when it is not one."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as err:
        raise ValueError(f"weather message is not JSON: {err}") from None
    if not isinstance(data, dict) or "weather" not in data or "domain" not in data:
        raise ValueError("weather message lacks 'weather'/'domain' (not a tta_perception weather message)")
    stamp = data.get("stamp")
    ns = None
    if isinstance(stamp, Mapping) and "sec" in stamp:
        ns = stamp_to_ns(stamp.get("sec", 0), stamp.get("nanosec", 0))
    return ns, data
