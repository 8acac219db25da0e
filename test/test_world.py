"""The embedded world: determinism, ground truth aligned with pixels, physically monotonic weather."""
from __future__ import annotations

import numpy as np
import pytest

from tta_perception.world import classes as C
from tta_perception.world.effects import box_blur, compose
from tta_perception.world.render import Renderer
from tta_perception.world.schedule import Schedule, load_schedule, list_sequences
from tta_perception.world.sequences import SequenceRenderer, iter_sequence
from tta_perception.world.weather import PRESETS, WeatherParameters, preset, weather_from_spec


@pytest.fixture(scope="module")
def buf():
    return Renderer(seed=5).render(20.0)


def test_same_seed_same_frames_and_different_seed_differs():
    a = SequenceRenderer("clear2rain", seed=3).frame(700)
    b = SequenceRenderer("clear2rain", seed=3).frame(700)
    c = SequenceRenderer("clear2rain", seed=4).frame(700)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


def test_parallel_rendering_equals_serial():
    serial = list(iter_sequence("dynamic", stop=16, workers=1))
    parallel = list(iter_sequence("dynamic", stop=16, workers=2))
    assert [f.index for f in parallel] == list(range(16))
    for s, p in zip(serial, parallel):
        assert np.array_equal(s.rgb, p.rgb) and np.array_equal(s.labels, p.labels)


def test_consecutive_frames_are_coherent():
    r = SequenceRenderer("clear")
    f0, f1, far = r.frame(100), r.frame(101), r.frame(160)
    same_next = (f0.labels == f1.labels).mean()
    same_far = (f0.labels == far.labels).mean()
    assert same_next > 0.85 and same_next > same_far + 0.05


def test_scene_has_the_classes_of_a_street():
    seen = set()
    for t in range(0, 200, 10):
        seen |= set(np.unique(Renderer(seed=1).render(float(t)).label).tolist())
    assert len(C.CLASS_NAMES) >= 10
    assert seen == set(range(C.NUM_CLASSES)), [C.CLASS_NAMES[i] for i in set(range(C.NUM_CLASSES)) - seen]


def test_labels_follow_the_pixels(buf):
    img = compose(buf, preset("ClearNoon"), frame=0).astype(np.float32)
    mean = {c: img[buf.label == c].mean(0) for c in np.unique(buf.label)}
    r, g, b = mean[C.SKY]
    assert b > r + 20  # blue sky
    r, g, b = mean[C.VEGETATION]
    assert g > b and g > r  # green plants
    road = mean[C.ROAD]
    assert np.ptp(road) < 15 and mean[C.ROAD_LINE].mean() > road.mean() + 40  # grey road, bright lines
    # label boundaries are image edges: colour gradients concentrate on them
    lab = buf.label
    edge = np.zeros(lab.shape, bool)
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    grad = np.zeros(lab.shape, np.float32)
    grad[:, 1:] += np.abs(np.diff(img, axis=1)).sum(-1)
    grad[1:, :] += np.abs(np.diff(img, axis=0)).sum(-1)
    assert grad[edge].mean() > 3 * grad[~edge].mean()


def test_sky_above_road_below_horizon(buf):
    rows = np.arange(buf.label.shape[0])[:, None] * np.ones_like(buf.label)
    assert rows[buf.label == C.SKY].max() < buf.horizon + 1
    assert rows[buf.label == C.ROAD].min() > buf.horizon


def _far_contrast(buf, fog):
    img = compose(buf, preset("ClearNoon").replace(fog_density=fog, fog_distance=0.0), frame=1).astype(np.float32)
    far = (buf.depth > 40) & (buf.label != C.SKY)
    return img[far].std()


def test_more_fog_means_less_contrast_far_away(buf):
    contrasts = [_far_contrast(buf, fog) for fog in (0, 20, 50, 90)]
    assert all(a > b for a, b in zip(contrasts, contrasts[1:])), contrasts
    near = buf.depth < 8
    img0 = compose(buf, preset("ClearNoon"), frame=1).astype(np.float32)
    img9 = compose(buf, preset("HeavyFogNoon"), frame=1).astype(np.float32)
    far = (buf.depth > 40) & (buf.label != C.SKY)
    # fog eats the far scene much more than the near one
    assert np.abs(img9[near] - img0[near]).mean() < np.abs(img9[far] - img0[far]).mean()


def test_lower_sun_is_darker(buf):
    means = [compose(buf, preset("ClearNoon").replace(sun_altitude_angle=a), frame=1).mean()
             for a in (70, 40, 15, 0, -6, -90)]
    assert all(a > b for a, b in zip(means, means[1:])), means  # darker until astronomical night


def test_night_is_noisier_than_day(buf):
    def noise(w):
        a = compose(buf, w, frame=1).astype(np.float32)
        b = compose(buf, w, frame=2).astype(np.float32)
        road = buf.label == C.ROAD
        return np.abs(a - b)[road].mean() / max(a[road].mean(), 1.0)
    assert noise(preset("ClearNight")) > 2 * noise(preset("ClearNoon"))


def test_rain_adds_streaks_that_fall(buf):
    wet = preset("HardRainNoon")
    dry = wet.replace(precipitation=0.0)

    def streaks(frame):
        d = compose(buf, wet, frame=frame).astype(np.float32) - compose(buf, dry, frame=frame).astype(np.float32)
        d = d.mean(-1)
        return d - box_blur(d, 4)  # keep the thin streaks, drop the smooth haze

    # look where the scene is flat (open sky), so only the streaks remain
    flat = box_blur((buf.label == C.SKY).astype(np.float32), 4) > 0.999
    s1, s2 = streaks(1) * flat, streaks(2) * flat
    var = (s1 * s1).mean()
    vertical = (s1[1:] * s1[:-1]).mean() / var
    horizontal = (s1[:, 1:] * s1[:, :-1]).mean() / var
    assert flat.sum() > 500 and vertical > horizontal + 0.1  # streaks run (nearly) vertically
    moved = (s1 * s2).mean() / var
    assert moved < 0.5 * vertical  # and are somewhere else in the next frame


def test_carla_presets_and_validation():
    for name in ("ClearNoon", "CloudyNoon", "WetNoon", "WetCloudyNoon", "MidRainyNoon", "HardRainNoon",
                 "SoftRainNoon", "ClearSunset", "MidRainSunset", "HardRainSunset", "ClearNight", "HardRainNight"):
        assert name in PRESETS
    assert preset("ClearNight").is_night and not preset("ClearNoon").is_night
    with pytest.raises(ValueError, match="fog_density"):
        WeatherParameters(fog_density=150)
    with pytest.raises(ValueError, match="unknown weather preset"):
        preset("Sunny")
    with pytest.raises(ValueError, match="unknown weather field"):
        weather_from_spec({"preset": "ClearNoon", "snow": 3})
    w = weather_from_spec({"preset": "ClearNoon", "fog_density": 30})
    assert w.fog_density == 30 and w.sun_altitude_angle == preset("ClearNoon").sun_altitude_angle


def test_schedule_interpolates_and_names_domains():
    s = Schedule.from_dict({"fps": 10, "keyframes": [
        {"time": 0, "preset": "ClearNoon", "domain": "clear"},
        {"time": 10, "preset": "ClearNoon", "fog_density": 80},
        {"time": 20, "weather": {"preset": "ClearNight"}, "domain": "night"}]})
    assert s.weather_at(5).fog_density == pytest.approx((2 + 80) / 2)
    assert s.domain_at(12) == "clear" and s.domain_at(17) == "night"
    assert s.weather_at(100).is_night  # hold at the end
    assert s.frames == 200 and s.domains == ("clear", "night")
    loop = Schedule.from_dict({"loop": True, "keyframes": [{"time": 0, "preset": "ClearNoon"},
                                                           {"time": 10, "preset": "ClearNight"}]})
    assert loop.weather_at(12).sun_altitude_angle == pytest.approx(loop.weather_at(2).sun_altitude_angle)
    with pytest.raises(ValueError, match="unknown key"):
        Schedule.from_dict({"keyframes": [{"time": 0, "preset": "ClearNoon", "snowfall": 1}]})
    with pytest.raises(ValueError, match="back in time"):
        Schedule.from_dict({"keyframes": [{"time": 5, "preset": "ClearNoon"}, {"time": 1, "preset": "ClearNoon"}]})


def test_shipped_sequences_are_the_carlatta_ones():
    assert {"clear", "day2night", "clear2fog", "clear2rain", "dynamic"} <= set(list_sequences())
    assert load_schedule("day2night").weather_at(119).is_night
    assert load_schedule("clear2fog").weather_at(119).fog_density >= 80
    assert load_schedule("clear2rain").weather_at(119).precipitation >= 80
    dyn = load_schedule("dynamic")
    assert dyn.loop and len(dyn.domains) >= 4 and dyn.frames >= 2 * dyn.period * dyn.fps - 1
    with pytest.raises(ValueError, match="unknown sequence"):
        load_schedule("snowstorm")


def test_carla_palette_maps_to_class_ids():
    from tta_perception.world.carla_labels import CARLA_TAGS, palette_to_ids
    from tta_perception.world.classes import CLASS_ID, IGNORE_INDEX, PALETTE

    names = list(CARLA_TAGS)
    rgb = np.array([[CARLA_TAGS[n][0] for n in names] + [(1, 2, 3)]], dtype=np.uint8)
    ids = palette_to_ids(rgb)[0]
    for n, got in zip(names, ids[:-1]):
        want = CARLA_TAGS[n][1]
        assert got == (IGNORE_INDEX if want is None else CLASS_ID[want]), n
    assert ids[-1] == IGNORE_INDEX  # not a CARLA colour (e.g. blended by resizing)
    # every class of the embedded world is reachable, and its own palette colour maps back to it
    np.testing.assert_array_equal(palette_to_ids(PALETTE[None]), np.arange(len(PALETTE))[None])
    with pytest.raises(ValueError, match="uint8"):
        palette_to_ids(np.zeros((2, 2, 3), np.float32))
