"""Evidence a reviewer accepts: intervals over seeds, paired comparisons, time to recover after a
weather change, and the real-time protocol's scheduling; on constructed inputs with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tta_perception.metrics import paired_difference, t_interval, time_to_recover
from tta_perception.metrics.recovery import frame_rows_from_csv


# ------------------------------------------------------------------------------------ intervals
def test_t_interval_known_values():
    iv = t_interval([1, 2, 3, 4, 5])
    # textbook: t(0.975, 4) = 2.776445, s = sqrt(2.5), half = t * s / sqrt(5)
    assert iv.mean == 3 and iv.n == 5 and iv.std == pytest.approx(math.sqrt(2.5))
    assert iv.half_width == pytest.approx(2.776445105 * math.sqrt(2.5) / math.sqrt(5), rel=1e-9)
    assert (iv.low, iv.high) == pytest.approx((1.0367568, 4.9632432), abs=1e-6)
    # two values: t(0.975, 1) = 12.7062
    two = t_interval([24.8, 25.2])
    assert two.half_width == pytest.approx(12.706204736 * np.std([24.8, 25.2], ddof=1) / math.sqrt(2), rel=1e-9)
    # scipy's own one-sample t interval (another code path) agrees
    vals = [26.41, 25.38, 26.52, 26.0, 25.95]
    ref = stats.ttest_1samp(vals, 0).confidence_interval(0.95)
    got = t_interval(vals)
    assert (got.low, got.high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert t_interval(vals, 0.9).half_width < got.half_width
    # one run: a mean without an interval; nothing: NaN; NaN values are dropped
    one = t_interval([47.0])
    assert one.mean == 47.0 and math.isnan(one.half_width) and not one.significant and one.format() == "47.0"
    assert math.isnan(t_interval([]).mean) and t_interval([1.0, float("nan"), 3.0]).n == 2
    assert t_interval([1, 2, 3, 4, 5]).format(2) == "3.00 ± 1.96"
    with pytest.raises(ValueError):
        t_interval([1, 2], confidence=1.5)


def test_paired_difference_matches_the_paired_t_test():
    dplot = [26.41, 25.38, 26.52, 26.0, 25.95]
    rmt = [24.8, 25.1, 24.7, 25.2, 24.9]
    d = paired_difference(dplot, rmt)
    ref = stats.ttest_rel(dplot, rmt)
    ci = ref.confidence_interval(0.95)
    assert d.mean == pytest.approx(np.mean(np.subtract(dplot, rmt)))
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert d.significant == (ref.pvalue < 0.05) and d.significant   # DPLOT's error is higher on every seed
    # a difference that changes sign across seeds is not significant
    noisy = paired_difference([1.0, -1.0, 0.5, -0.4, 0.2], [0.0] * 5)
    assert not noisy.significant and noisy.low < 0 < noisy.high
    assert noisy.significant == (stats.ttest_1samp([1.0, -1.0, 0.5, -0.4, 0.2], 0).pvalue < 0.05)
    # a seed missing for either method drops the pair
    assert paired_difference([1.0, float("nan"), 3.0], [0.0, 1.0, 1.0]).n == 2
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0], [1.0, 2.0])


# ------------------------------------------------------------------------------------ recovery
def _rows(*phases, start=0, step=1):
    """(frame, domain, score) rows: phases of (domain, [scores])."""
    rows, f = [], start
    for dom, ys in phases:
        for y in ys:
            rows.append((f, dom, y))
            f += step
    return rows


def test_time_to_recover_ramp_and_window():
    ramp = [10, 20, 30, 40, 50, 60, 60, 60, 60, 60, 60, 60]         # plateau (last 6) = 60, 90 % = 54
    rows = _rows(("clear", [80] * 10), ("rain", ramp))
    (r,) = time_to_recover(rows, window=1)
    assert (r.change, r.frame, r.previous, r.domain) == (1, 10, "clear", "rain")
    assert r.plateau == 60 and r.threshold == pytest.approx(54) and r.frames == 5 and r.recovered
    assert r.start_score == 10 and r.phase_frames == 12 and r.label == "clear→rain@10"
    # a trailing mean of 3: 10, 15, 20, 30, 40, 50, 56.7 -> from the 7th frame of the phase
    assert time_to_recover(rows, window=3)[0].frames == 6
    # frames are counted in frame indices: every 10th frame -> 10x the frames
    assert time_to_recover(_rows(("clear", [80] * 10), ("rain", ramp), step=10), window=1)[0].frames == 50


def test_time_to_recover_edge_cases():
    # starts above and stays: 0
    assert time_to_recover(_rows(("a", [50] * 4), ("b", [60] * 8)))[0].frames == 0
    # dips after the switch, then recovers: counted to the last frame below
    assert time_to_recover(_rows(("a", [50] * 4), ("b", [60, 60, 10, 60, 60, 60, 60, 60])), window=1)[0].frames == 3
    # below at the end of the phase: not recovered (plateau (60+60+60+10)/4 = 47.5)
    r = time_to_recover(_rows(("a", [50] * 4), ("b", [60] * 7 + [10])), window=1)[0]
    assert r.frames is None and not r.recovered and r.plateau == pytest.approx(47.5)
    # the running score never averages in the previous phase: 100s before cannot hide the drop
    r = time_to_recover(_rows(("a", [100] * 5), ("b", [10, 50, 50, 50, 50, 50, 50, 50])), window=3)[0]
    assert r.frames == 3                                             # 10, 30, 36.7, 50 (>= 45)
    # several changes, a return to an earlier domain, unsorted rows and NaN (unprocessed) frames
    rows = _rows(("a", [50] * 4), ("b", [0, 60, 60, 60]), ("a", [0, 0, 50, 50, 50, 50]))
    rows[5] = (rows[5][0], "b", float("nan"))                       # frame 5 not processed: 4 (0) -> 6 (60)
    got = time_to_recover(list(reversed(rows)), window=1)
    assert [(g.previous, g.domain, g.frame, g.frames) for g in got] == [("a", "b", 4, 2), ("b", "a", 8, 2)]
    assert time_to_recover(_rows(("a", [1, 2, 3]))) == []            # no change, nothing to recover from
    with pytest.raises(ValueError):
        time_to_recover(rows, window=0)


def test_time_to_recover_from_an_evaluator_frames_csv(tmp_path):
    """The weather loop's evaluator CSV (``StreamScorer.write``) feeds the same function."""
    from tta_perception.metrics import StreamScorer

    sc = StreamScorer(["dplot"], num_classes=2)
    truth = np.zeros((4, 4), np.uint8)
    good = truth.copy()
    bad = np.ones((4, 4), np.uint8)
    # clear (frames 0-3, perfect), then rain: wrong for 2 frames, then perfect
    preds = [good] * 4 + [bad, bad, good, good, good, good]
    for i, p in enumerate(preds):
        stamp = 1_000_000_000 + i * 100_000_000
        sc.add_weather(stamp, {"domain": "clear" if i < 4 else "rain", "frame": i,
                               "stamp": {"sec": stamp // 10**9, "nanosec": stamp % 10**9}})
        sc.add_truth(stamp, truth)
        sc.add_prediction("dplot", stamp, p)
    paths = sc.write(tmp_path, plot=False)
    rows = frame_rows_from_csv(paths["frames"], "dplot")
    assert [r[0] for r in rows] == list(range(10)) and rows[4][1] == "rain"
    (r,) = time_to_recover(rows, window=1)
    assert (r.previous, r.domain, r.frame, r.frames) == ("clear", "rain", 4, 2)
    with pytest.raises(ValueError, match="frames CSV"):
        frame_rows_from_csv(paths["frames"], "tent")


# ------------------------------------------------------------------------------------ seeds
def test_a_seed_changes_the_stream_and_seed_0_is_the_original(tmp_path):
    from tta_perception.bench import streams
    from tta_perception.world.corruptions import corrupt_images
    from tta_perception.world.sequences import iter_sequence
    from tta_perception.world.sign_crops import render_sign_crops
    from tta_perception.world.weather import preset

    kw = dict(stride=100, start=100, stop=400, size=(24, 48), batch_size=1, cache_dir=tmp_path, workers=1,
              progress=False)
    s0 = list(streams.world_seg_stream("clear2fog", seed=0, **kw))
    s1 = list(streams.world_seg_stream("clear2fog", seed=1, **kw))
    ref = list(iter_sequence("clear2fog", seed=0, size=(24, 48), start=100, stop=400, stride=100, workers=1))
    assert all(np.array_equal(c.images[0], f.rgb) for c, f in zip(s0, ref))     # world 0, as before
    assert [c.domains for c in s0] == [c.domains for c in s1]                     # same schedule ...
    assert not np.array_equal(s0[0].labels, s1[0].labels)                         # ... another world
    assert streams.world_seg_stream("clear2fog", seed=1, **kw).info["world_seed"] == 1

    x, y = render_sign_crops(6, preset("ClearNoon"), seed=7)
    ckw = dict(n=6, batch_size=3, corruptions=["gaussian_noise"], cache_dir=tmp_path, progress=False)
    c0 = list(streams.world_cls_stream(seed=0, **ckw))
    c1 = list(streams.world_cls_stream(seed=1, **ckw))
    assert np.array_equal(np.concatenate([c.images for c in c0]), corrupt_images(x, "gaussian_noise", 5, seed=7))
    order = np.random.default_rng([1, 41, 0]).permutation(6)
    assert not np.array_equal(order, np.arange(6))
    noisy = corrupt_images(x, "gaussian_noise", 5, seed=8)                        # noise seed 7 + 1
    assert np.array_equal(np.concatenate([c.images for c in c1]), noisy[order])
    assert np.array_equal(np.concatenate([c.labels for c in c1]), y[order])       # labels follow the crops
    assert streams.stream_seeds(3) == {"world_seed": 3, "noise_seed": 10, "shuffle_seed": 4}
    with pytest.raises(ValueError, match="training world"):
        streams.stream_seeds(1000)


def test_dynamic_abrupt_has_the_phases_of_dynamic_with_instant_switches(tmp_path):
    from tta_perception.bench import streams
    from tta_perception.world.schedule import load_schedule

    dyn, ab = load_schedule("dynamic"), load_schedule("dynamic_abrupt")
    assert (ab.frames, ab.fps, ab.loop) == (dyn.frames, dyn.fps, dyn.loop) == (2400, 10.0, True)
    doms = [ab.domain_at(ab.frame_time(i)) for i in range(ab.frames)]
    assert doms == [dyn.domain_at(dyn.frame_time(i)) for i in range(dyn.frames)]
    switches = [i for i in range(1, ab.frames) if doms[i] != doms[i - 1]]
    assert switches == [180, 420, 660, 780, 900, 1140, 1380, 1620, 1860, 1980, 2100, 2340]
    for f in switches:       # the weather jumps between two frames and is held inside a phase
        before, at, after = (ab.weather_at(ab.frame_time(i)).as_dict() for i in (f - 1, f, f + 5))
        assert before != at and all(abs(at[k] - after[k]) < 1e-9 for k in at if isinstance(at[k], float))
        assert ab.is_step_between(ab.frame_time(f - 1), ab.frame_time(f))
        assert not dyn.is_step_between(dyn.frame_time(f - 1), dyn.frame_time(f))
    kw = dict(start=1370, stop=1400, stride=10, size=(16, 32), batch_size=1, cache_dir=tmp_path, workers=1,
              progress=False)
    assert streams.world_seg_stream("dynamic_abrupt", **kw).info["domain_changes"] == [
        {"frame": 1380, "previous": "clear", "domain": "rain", "instant": True}]
    assert streams.world_seg_stream("dynamic", **kw).info["domain_changes"][0]["instant"] is False
