"""The cameras of one car: where each sits on the car, which way it looks and its field of view.

Every view renders the same drive of the same world under the same weather at the same instant, each
with its own ground truth: the several cameras of one car. The renderer draws vertical facades and
camera-facing sprites along the road, so a camera can look along the road or back along it, not
sideways; side cameras are therefore not offered (a renderer that yaws would be needed).

- ``front``: the camera every benchmark uses: 90° horizontal field of view, 1.6 m up, in the
  middle of the ego lane (CarlaTTA's front RGB camera).
- ``narrow``: a long-range front camera beside it: 40°, the distance magnified (many driving rigs
  pair a narrow and a wide front camera).
- ``wide``: a wide-angle front camera: 120°, the sidewalks and facades at the edges.
- ``rear``: looking back along the road from the rear of the car, 90°, 1.2 m up: the road behind,
  the following car's headlights, the backs of oncoming vehicles; at night only the tail lights
  light the road.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class View:
    name: str
    fov_deg: float = 90.0
    direction: int = 1  # +1 along the road, -1 back
    height_m: Optional[float] = None  # above the road; None: the layout's camera height (1.6 m)
    lateral_m: float = 0.0  # to the right of the ego lane's centre
    horizon: float = 0.42  # image row of the horizon, as a fraction of the height
    description: str = ""


VIEWS = {
    "front": View("front", description="front, 90°, 1.6 m (the benchmarks' camera)"),
    "narrow": View("narrow", fov_deg=40.0, description="front narrow-angle, 40°, 1.6 m"),
    "wide": View("wide", fov_deg=120.0, description="front wide-angle, 120°, 1.6 m"),
    "rear": View("rear", direction=-1, height_m=1.2, description="rear, 90°, 1.2 m, looking back"),
}
#: the order a camera count takes them in (``weather_camera cameras:=N``, ``bench --cameras N``)
SURROUND = ("front", "rear", "narrow", "wide")


def get_view(view: "str | View") -> View:
    if isinstance(view, View):
        return view
    try:
        return VIEWS[view]
    except KeyError:
        raise ValueError(f"unknown camera view {view!r}; one of {', '.join(VIEWS)}") from None


def views_for(count: int) -> list[str]:
    """The first ``count`` views of :data:`SURROUND` (1..4)."""
    if not 1 <= int(count) <= len(SURROUND):
        raise ValueError(f"camera count must be 1..{len(SURROUND)}, got {count}")
    return list(SURROUND[: int(count)])
