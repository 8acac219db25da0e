"""Evidence a reviewer accepts: intervals over seeds, paired comparisons, time to recover after a
weather change, and the real-time protocol's scheduling; on constructed inputs with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tta_perception.metrics import paired_difference, t_interval, time_to_recover
from tta_perception.metrics.recovery import frame_rows_from_csv


def scipy_interval(result, values, confidence=0.95):
    """scipy's t interval of a one-sample or paired t test (``values``: the sample or the paired
    differences): ``TtestResult.confidence_interval`` from scipy 1.10 on; before it (scipy 1.8 beside ROS
    Humble) scipy's t distribution gives the same interval."""
    if hasattr(result, "confidence_interval"):
        ci = result.confidence_interval(confidence)
        return ci.low, ci.high
    return stats.t.interval(confidence, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))


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
    ref = scipy_interval(stats.ttest_1samp(vals, 0), vals)
    got = t_interval(vals)
    assert (got.low, got.high) == pytest.approx(ref, rel=1e-12)
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
    ci = scipy_interval(ref, np.subtract(dplot, rmt))
    assert d.mean == pytest.approx(np.mean(np.subtract(dplot, rmt)))
    assert (d.low, d.high) == pytest.approx(ci, rel=1e-12)
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
    # the evaluator's summary carries the same, with the default window
    import json
    summary = json.loads(paths["summary"].read_text())
    assert summary["recovery"]["dplot"] == json.loads(json.dumps([x.as_dict() for x in time_to_recover(rows)]))
    assert summary["recovery"]["dplot"][0]["frame"] == 4
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


# ------------------------------------------------------------------------------------ real time
class _FakeWorker:
    def __init__(self, clock_ref):
        self.clock_ref = clock_ref
        self.published_at: list[int] = []

    def start(self) -> bool:
        return True

    def publish(self) -> None:
        self.published_at.append(self.clock_ref[0].frame)


def _drive(frames, *, hz=10.0, predict_ms=0.0, step_ms=250.0, window=1, adapt_every=1):
    from tta_perception.bench.clock import RealtimeClock

    ref = []
    w = _FakeWorker(ref)
    clock = RealtimeClock(hz, predict_ms, step_ms, window, start_step=w.start, publish=w.publish)
    ref.append(clock)
    for i in range(frames):
        clock.arrive()
        if (i + 1) % adapt_every == 0:
            clock.request()
    return clock, w


def test_realtime_clock_a_step_of_2_5_periods_runs_every_3rd_frame():
    clock, w = _drive(10, step_ms=250.0)
    assert clock.step_frames == [0, 3, 6, 9]                        # requests at 1, 2, 4, 5, ... find it busy
    assert w.published_at == clock.visible_frames == [3, 6, 9]     # its weights from the frame after it ends
    s = clock.summary()
    assert (s["requests"], s["steps"], s["dropped_requests"]) == (10, 4, 6)
    assert s["fraction_adapted"] == pytest.approx(0.4) and s["step_periods"] == pytest.approx(2.5)
    assert _drive(10, step_ms=200.0)[0].step_frames == [0, 2, 4, 6, 8]          # ends exactly at a frame: idle
    assert _drive(10, step_ms=50.0)[0].step_frames == list(range(10))           # faster than the camera
    assert _drive(10, step_ms=50.0)[1].published_at == list(range(1, 10))
    # the step is requested after the frame's prediction: predict 30 ms + step 300 ms still fits 3 periods
    assert _drive(10, predict_ms=30.0, step_ms=300.0)[0].step_frames == [0, 3, 6, 9]
    assert _drive(12, predict_ms=30.0, step_ms=301.0)[0].step_frames == [0, 4, 8]


def test_realtime_clock_with_the_streaming_window():
    # DPLOT's segmentation costs on this CPU: 75 ms prediction, 1135 ms step (11.35 periods at 10 Hz),
    # a request every 4 frames on a window of 4: a step every 12 frames, a third of the frames adapted on
    clock, _ = _drive(48, predict_ms=75.0, step_ms=1135.0, window=4, adapt_every=4)
    assert clock.step_frames == [3, 15, 27, 39]
    assert clock.summary()["frames_adapted_on"] == 16 and clock.summary()["fraction_adapted"] == pytest.approx(1 / 3)
    assert clock.summary()["late_frames"] == 0
    # predictions alone slower than the camera: each frame waits for the previous one (counted as late)
    slow, _ = _drive(5, predict_ms=150.0, step_ms=None)
    assert slow.summary()["late_frames"] == 4 and slow.summary()["max_late_ms"] == pytest.approx(200.0)
    assert slow.steps == 0 and slow.dropped_requests == 5           # a method without steps never adapts
    # a reset drops the running step; the window starts empty
    clock, w = _drive(2, step_ms=1000.0, window=4)
    clock.reset()
    clock.arrive()
    clock.request()
    assert clock.step_frames == [0, 2] and w.published_at == []
    with pytest.raises(ValueError):
        _drive(1, hz=0.0)


def test_realtime_run_through_the_streaming_adapter(tmp_path):
    """The clock drives the node's StreamingAdapter: steps only when idle, weights visible later."""
    import copy

    import torch

    from tta_perception.bench import streams
    from tta_perception.bench.runner import RunOptions, build_stream_adapter, run_method
    from tta_perception.bench.clock import RealtimeClock
    from tta_perception.bench.variants import build_variant
    from tta_perception.runtime.model_loader import load_model

    torch.manual_seed(0)
    lm = load_model(architecture="driveseg", random_init=True)
    st = streams.world_seg_stream("clear2fog", stride=100, size=(16, 32), batch_size=1, cache_dir=tmp_path,
                                  workers=1, progress=False)
    opts = RunOptions(device=torch.device("cpu"), streaming=True, window=2, adapt_every=2, progress=False)
    costs = {"predict_ms": 0.0, "step_ms": 350.0}                   # 3.5 periods at 10 Hz
    r = run_method("tent", lm.model, st, RunOptions(**{**opts.__dict__, "realtime_hz": 10.0, "realtime_costs": costs}))
    rt = r.streaming["realtime"]
    assert rt["step_frames"] == [1, 5, 9] and r.streaming["adapt_steps"] == 3      # requests at 1, 3, 5, ...
    assert rt["requests"] == 6 and rt["fraction_adapted"] == pytest.approx(0.5)
    off = run_method("tent", lm.model, st, opts)
    assert off.streaming["adapt_steps"] == 6 and off.series_y != r.series_y

    # visibility: until frame 5 (t = 500 ms >= 100 + 350) the predictions are the unadapted model's
    frames = [c.tensor() for c in st]
    method = build_variant("tent", copy.deepcopy(lm.model))
    adapter = build_stream_adapter(method, opts)
    clock = RealtimeClock(10.0, 0.0, 350.0, 2, start_step=lambda: adapter.adapt_now(publish=False),
                          publish=adapter.publish)
    adapter.on_request = clock.request
    frozen = build_stream_adapter(build_variant("tent", copy.deepcopy(lm.model)), opts)
    frozen.set_enabled(False)
    for i, x in enumerate(frames[:6]):
        clock.arrive()
        y, y0 = adapter.predict(x), frozen.predict(x)
        assert torch.equal(y, y0) == (i < 5), i
    assert adapter.stats()["publishes"] == 1 and adapter.stats()["adapt_steps"] == 2   # the 2nd not visible yet
    adapter.close()
    frozen.close()


# ------------------------------------------------------------------------------------ bench report
def _run(method, seed, seq, domains):
    from tta_perception.bench.runner import MethodRun

    return MethodRun(method, "s", seed, domains, seq, 4, 0.0, 0.0, 0.0, "none")


def test_seed_intervals_and_the_paired_comparison_on_known_runs():
    from tta_perception.bench.evidence import format_paired, paired_vs_best, seed_intervals, summary_intervals
    from tta_perception.bench.streams import BenchStream

    st = BenchStream("s", "seg", 2, "continual", 1, ["a", "b"], {"a": "a", "b": "b"}, 4, lambda: [], {})
    seq = {"dplot": [50.0, 52.0, 51.0], "rmt": [49.0, 50.0, 50.5], "norm": [45.0, 46.0, 47.0]}
    runs = [_run(m, s, v[s], {"a": v[s] + 1, "b": v[s] - 3}) for m, v in seq.items() for s in range(3)]
    rows = seed_intervals(st, runs, ["norm", "rmt", "dplot"], "seg")
    iv = rows["rmt"]["cells"]["seq"]
    ref = scipy_interval(stats.ttest_1samp(seq["rmt"], 0), seq["rmt"])
    assert iv.mean == pytest.approx(np.mean(seq["rmt"])) and (iv.low, iv.high) == pytest.approx(ref)
    assert rows["rmt"]["cells"]["mean"].mean == pytest.approx(np.mean(seq["rmt"]) - 1)      # (a + b) / 2
    assert rows["dplot"]["values"]["a"] == [51.0, 53.0, 52.0]
    p = paired_vs_best(rows, "seq", "seg")
    ci = scipy_interval(stats.ttest_rel(seq["dplot"], seq["rmt"]), np.subtract(seq["dplot"], seq["rmt"]))
    assert p["best_prior"] == "rmt" and p["dplot_wins_seeds"] == 3 and p["dplot_better"]
    assert (p["difference"].low, p["difference"].high) == pytest.approx(ci)
    assert not p["significant"]                  # better on all 3 seeds, and still not significant
    assert "not significant at 95 %" in format_paired(p, "s")
    # classification: lower is better, the best prior is the lowest error
    pc = paired_vs_best(seed_intervals(st, runs, ["norm", "rmt", "dplot"], "cls"), "mean", "cls")
    assert pc["best_prior"] == "norm" and not pc["dplot_better"] and pc["significant"]
    # over several streams: the per-seed mean of each stream's cell
    two = summary_intervals({"s": rows, "t": rows}, "seq")
    assert two["dplot"]["values"]["mean"] == seq["dplot"]


def test_bench_seeds_intervals_and_an_exact_realtime_repetition(tmp_path, capsys):
    import csv
    import json

    from tta_perception.cli.main import main

    base = ["bench", "--task", "seg", "--stream", "--random-init", "--sequence", "clear2fog", "--stride", "200",
            "--size", "32x64", "--methods", "source,tent", "--window", "2", "--adapt-every", "2", "--seeds", "0,1",
            "--cache", str(tmp_path / "cache"), "--no-progress", "--device", "cpu", "--workers", "1", "--no-plot"]
    out = tmp_path / "a"
    assert main(base + ["--realtime", "10", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "clear2fog over 2 seeds: mean ± 95 % CI" in text and "real-time protocol at 10 Hz" in text
    res = json.loads((out / "results.json").read_text())
    tent = [r for r in res["runs"] if r["method"] == "tent"]
    assert [r["seed"] for r in tent] == [0, 1] and tent[0]["overall"] != tent[1]["overall"]   # another world
    cell = res["evidence"]["streams"]["clear2fog"]["rows"]["tent"]["cells"]["seq"]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(np.mean([r["overall"] for r in tent]), abs=1e-3)
    with open(out / "ci_clear2fog.csv") as fh:
        ci = [r for r in csv.DictReader(fh) if r["method"] == "tent" and r["cell"] == "seq"]
    assert float(ci[0]["ci95_half_width"]) == pytest.approx(cell["half_width"], abs=1e-3) and ci[0]["seeds"] == "0 1"
    costs = res["realtime"]["costs"]
    assert set(costs) == {"source", "tent"} and costs["source"]["step_ms"] is None
    assert costs["tent"]["step_ms"] > 0 and costs["tent"]["predict_ms"] > 0
    rt = [r for r in res["realtime"]["runs"] if r["method"] == "tent"]
    assert len(rt) == 2 and all(r["streaming"]["realtime"]["hz"] == 10 for r in rt)
    assert (out / "realtime.csv").is_file()
    # the recorded costs repeat the real-time runs exactly, whatever the machine does meanwhile
    again_args = [a if a != "0,1" else "1" for a in base] + ["--methods", "tent"]
    assert main(again_args + ["--realtime", "10", "--realtime-costs", str(out / "results.json"),
                              "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert again["realtime"]["costs"] == {"tent": costs["tent"]}
    assert again["realtime"]["costs_from"].startswith("--realtime-costs")
    assert [(r["series"], r["streaming"]["realtime"]) for r in again["realtime"]["runs"]] == \
        [(r["series"], r["streaming"]["realtime"]) for r in rt[1:]]
    capsys.readouterr()
    for bad in (["--realtime", "10", "--realtime-costs", str(tmp_path / "none.json")],   # no such file
                ["--methods", "norm", "--realtime", "10", "--realtime-costs", str(out / "results.json")],  # no costs
                ["--realtime-costs", str(out / "results.json")],                           # without --realtime
                ["--seeds", "0,0"]):
        assert main(base + bad + ["--out", str(tmp_path / "c")]) == 2, bad
    assert main([a for a in base if a != "--stream"] + ["--realtime", "10", "--out", str(tmp_path / "c")]) == 2
