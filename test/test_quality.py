"""The per-frame quality estimate (``runtime/quality.py``), its validation scores
(``metrics/quality.py``) and the collapse guard (``runtime/guard.py``) on the committed driveseg
weights and rendered source frames."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from tta_perception.metrics.quality import auroc, spearman, validate, window_means
from tta_perception.runtime.errors import ConfigError
from tta_perception.runtime.quality import (ERROR, FORMAT, OK, WARN, LevelTracker, QualityEstimator, check_calibration,
                                            fit, frame_signals, load_calibration, transform)

torch.set_num_threads(1)


def cal(features=("conf",), weights=(0.0, 1.0), **extra):
    return {"format": FORMAT, "features": list(features), "weights": list(weights), **extra}


# ------------------------------------------------------------------------------------ signals, fit
def test_signals_of_sure_uncertain_and_blank_outputs():
    c, h, w = 4, 8, 8
    sure = torch.full((c, h, w), -20.0)
    sure[0, :, :4] = 20.0                 # half the frame class 0, half class 1, both certain
    sure[1, :, 4:] = 20.0
    s = frame_signals(sure, torch.rand(3, h, w), step=1)
    assert s["conf"] == pytest.approx(1.0) and s["ent"] == pytest.approx(0.0, abs=1e-6)
    assert s["pred_ent"] == pytest.approx(math.log(2) / math.log(4))   # two equal classes of four
    flat = frame_signals(torch.zeros(c, h, w), torch.zeros(3, h, w), step=1)
    assert flat["conf"] == pytest.approx(0.25) and flat["ent"] == pytest.approx(1.0)
    assert flat["lum"] == 0.0 and flat["contrast"] == 0.0 and flat["sharp"] == 0.0
    nan = sure.clone()
    nan[:, 0, 0] = float("nan")
    assert frame_signals(nan, None, step=1)["nonfinite"] == 1.0


def test_fit_recovers_the_weights_that_made_the_accuracy():
    rng = np.random.default_rng(0)
    feats = ("conf", "pred_ent", "lum")
    true = [0.3, 0.8, -1.5, 2.0]
    sig = [{"conf": float(rng.uniform(0.3, 0.99)), "pred_ent": float(rng.uniform(0.2, 0.9)),
            "lum": float(rng.uniform(0.1, 0.6))} for _ in range(50)]
    acc = [1 / (1 + math.exp(-(true[0] + sum(w * transform(f, s[f]) for f, w in zip(feats, true[1:]))))) for s in sig]
    assert fit(sig, acc, feats) == pytest.approx(true, abs=1e-6)
    with pytest.raises(ValueError, match="more than"):
        fit(sig[:3], acc[:3], feats)


def test_estimator_levels_and_forced_errors():
    q = QualityEstimator(cal(("conf",), (0.0, 1.0)))   # estimate = conf exactly (logit then sigmoid)
    logits = torch.zeros(4, 8, 8)
    logits[0] = 2.0
    img = torch.rand(3, 8, 8)
    out = q(logits, img)
    conf = math.exp(2) / (math.exp(2) + 3)
    assert out.estimate == pytest.approx(conf, abs=1e-6) and out.calibrated
    assert out.level == q.level(conf) == (OK if conf >= 0.75 else WARN if conf >= 0.5 else ERROR)
    assert q.level(0.9) == OK and q.level(0.6) == WARN and q.level(0.4) == ERROR and q.level(float("nan")) == ERROR
    blind = q(logits, torch.zeros(3, 8, 8))
    assert blind.level == ERROR and "blind" in blind.reason and math.isfinite(blind.estimate)
    nan = q(torch.full((4, 8, 8), float("nan")), img)
    assert nan.level == ERROR and math.isnan(nan.estimate) and "non-finite" in nan.reason
    raw = QualityEstimator(None)(logits, img)
    assert not raw.calibrated and raw.estimate == pytest.approx(conf, abs=1e-6)
    with pytest.raises(ValueError, match="error_below"):
        QualityEstimator(None, warn_below=0.4, error_below=0.6)


def test_a_calibration_is_checked_before_use(tmp_path):
    for bad, msg in (({"format": "x"}, "not a quality calibration"), (cal(("foo",), (0, 1)), "features"),
                     (cal(("conf",), (0.0,)), "weights"), (cal(("conf",), (0.0, float("nan"))), "weights")):
        with pytest.raises(ValueError, match=msg):
            check_calibration(bad)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"tent": cal(("conf", "lum"), (0.1, 1.0, -0.5))}))
    got, where = load_calibration("", "tent", str(path))
    assert got["features"] == ["conf", "lum"] and "tent" in where
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_calibration("", "tent", str(path))
    with pytest.raises(ConfigError, match="not found"):
        load_calibration("", "tent", str(tmp_path / "missing.json"))
    none, why = load_calibration("no_such_model", "tent")
    assert none is None and "uncalibrated" in why


def test_the_shipped_models_carry_a_calibration_per_method():
    from tta_perception.models.checkpoint import read_manifest

    manifest = read_manifest()
    for model in ("driveseg", "lite0_seg"):
        table = manifest[model].get("quality_calibration", {})
        assert {"source", "norm", "tent", "eata", "sar", "rmt", "dplot"} <= set(table), model
        for method, c in table.items():
            check_calibration(c)
            assert c["fit"]["cv_mae_points"] < 30 and c["method"] == method
            if method != "source":  # what the collapse guard's thresholds stay below
                g = c["guard_signals"]
                assert g["reliable_frames"] > 50 and 0.5 < g["kept_mean_p1"] <= g["kept_mean_p50"] <= 1.0
        q = QualityEstimator(load_calibration(model, "dplot")[0])
        assert q.calibrated


def test_level_tracker_reports_each_change_once():
    from tta_perception.runtime.quality import Quality

    q = QualityEstimator(cal(("conf",), (0.0, 1.0)))
    t = LevelTracker(q, window=2)

    def feed(est, reason=""):
        return t.update(Quality(est, ERROR if reason else q.level(est), reason))

    assert feed(0.9) == (None, OK) and feed(0.9) is None
    assert feed(0.5) == (OK, WARN)                 # mean 0.7
    assert feed(0.3) == (WARN, ERROR)              # mean 0.4
    assert feed(0.95, "blind camera") is None and t.reason == "blind camera"
    assert feed(0.95) == (ERROR, OK)               # mean 0.95
    assert t.changes == 3 and t.counts == {"OK": 3, "WARN": 1, "ERROR": 2}



def test_an_estimate_below_the_source_model_is_at_least_warn():
    from tta_perception.runtime.quality import Quality

    q = QualityEstimator(cal(("conf",), (0.0, 1.0)))           # default gain threshold 0
    ok = Quality(0.9, q.level(0.9))
    assert math.isnan(ok.gain) and math.isnan(ok.source_estimate)
    worse = q.with_source(ok, 0.95)                              # the source model is estimated better
    assert worse.level == WARN and worse.gain == pytest.approx(-0.05) and worse.estimate == 0.9
    assert q.with_source(ok, 0.6).level == OK                    # a gain keeps OK
    assert q.with_source(Quality(0.4, ERROR), 0.1).level == ERROR  # never lowered
    assert QualityEstimator(None, gain_warn_below=-0.1).with_source(ok, 0.95).level == OK
    shifted = QualityEstimator(cal(("conf",), (0.0, 1.0), gain_offset=0.1))  # its estimates run 0.1 above the source's
    assert shifted.with_source(ok, 0.75).gain == pytest.approx(0.05) and shifted.with_source(ok, 0.75).level == OK
    assert shifted.with_source(ok, 0.85).level == WARN
    with pytest.raises(ValueError, match="gain_offset"):
        check_calibration(cal(gain_offset=5))
    with pytest.raises(ValueError, match="gain threshold"):
        QualityEstimator(None, gain_warn_below=2.0)
    t = LevelTracker(q, window=3)                                # the window's mean gain of the judged frames
    assert t.update(Quality(0.9, OK)) == (None, OK) and math.isnan(t.gain)
    assert t.update(q.with_source(Quality(0.9, OK), 0.97)) == (OK, WARN) and t.gain == pytest.approx(-0.07)
    assert t.update(Quality(0.9, OK)) is None and t.update(Quality(0.9, OK)) is None
    assert t.update(Quality(0.9, OK)) == (WARN, OK)              # the judged frame left the window

def test_outputs_losing_the_source_models_classes_are_warn_with_a_kept_threshold():
    from tta_perception.runtime.quality import KEPT_DEFAULT, Quality, calibrated_min_kept

    q = QualityEstimator(cal(("conf",), (0.0, 1.0), guard_signals={"kept_mean_p1": 0.874}), min_kept=-1)
    assert q.min_kept == calibrated_min_kept(q.calibration) == pytest.approx(0.85)
    assert QualityEstimator(None, min_kept=-1).min_kept == KEPT_DEFAULT       # nothing measured
    off = QualityEstimator(cal(("conf",), (0.0, 1.0), guard_signals={"kept_mean_p1": 0.874}))
    assert off.min_kept == 0.0 and off.with_source(Quality(0.9, OK), 0.6, kept=0.1).level == OK  # the default: never
    with pytest.raises(ValueError, match="kept threshold"):
        QualityEstimator(None, min_kept=1.5)
    ok = Quality(0.9, q.level(0.9))
    assert q.with_source(ok, 0.6, kept=0.9).level == OK and q.with_source(ok, 0.6, kept=0.9).kept == 0.9
    assert q.with_source(ok, 0.6, kept=0.8).level == WARN                     # a gain, but classes lost
    assert q.with_source(ok, 0.6).level == OK and math.isnan(q.with_source(ok, 0.6).kept)  # not known: no flag
    assert q.level(0.9, 0.1, 0.8) == WARN and q.level(0.9, 0.1, 0.9) == OK and q.level(0.3, 0.1, 0.9) == ERROR
    t = LevelTracker(q, window=3)                                # the newest judged frame's kept in the window
    assert t.update(q.with_source(ok, 0.6, kept=0.8)) == (None, WARN) and t.kept == 0.8
    assert t.update(ok) is None and t.kept == 0.8                # a frame not judged keeps the judged one's
    assert t.update(q.with_source(ok, 0.6, kept=0.95)) == (WARN, OK) and t.kept == 0.95
    for _ in range(3):
        t.update(ok)
    assert math.isnan(t.kept) and t.level == OK                  # no judged frame left in the window


# ------------------------------------------------------------------------------------ validation scores
def test_validation_scores_on_constructed_frames():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5 and math.isnan(auroc([0.1, 0.2], [True, True]))
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert list(window_means([1, 2, 3, 4, 5], 2)) == [1.5, 3.5, 5.0]
    est = [0.9, 0.8, 0.5, 0.4]
    acc = [0.85, 0.8, 0.6, 0.3]
    v = validate(est, [OK, OK, WARN, ERROR], acc, [0.7, 0.6, 0.3, 0.1], ["clear", "clear", "night", "night"],
                 source_miou=[0.6, 0.7, 0.5, 0.05], window=2)
    assert v["mae_points_by_phase"]["clear"] == pytest.approx(2.5) and v["mae_points_by_phase"]["night"] == pytest.approx(10)
    assert v["below_source_frames"] == 2 and v["warn_recall_below_source"] == 0.5
    assert v["levels"] == {"OK": 2, "WARN": 1, "ERROR": 1} and v["spearman_accuracy"] == pytest.approx(1.0)
    assert v["auroc_below_source"] == 0.5 and "auroc_below_source_gain" not in v
    # the source model's own estimate on the same frames: the estimated gain ranks the frames below it first
    g = validate(est, [OK, OK, WARN, ERROR], acc, [0.7, 0.6, 0.3, 0.1], ["clear", "clear", "night", "night"],
                 source_miou=[0.6, 0.7, 0.5, 0.05], window=2, source_estimate=[0.8, 0.9, 0.6, 0.3])
    assert g["auroc_below_source_gain"] == 1.0 and g["auroc_below_source"] == 0.5
    # the node's flag, a gain below 0: gains +0.1, -0.05, +0.02, -0.1; true mIoU - source +0.05, -0.1, -0.1, +0.2
    args = ([0.8] * 4, [OK] * 4, [0.8] * 4, [0.5] * 4, ["clear"] * 4)
    f = validate(*args, source_miou=[0.45, 0.6, 0.6, 0.3], window=2, source_estimate=[0.7, 0.85, 0.78, 0.9])
    assert f["gain_recall_below_source"] == 0.5 and f["gain_rate_other_frames"] == 0.5
    # windows: gains +0.025 (true -0.025: below source) and -0.04 (true +0.05)
    assert f["gain_recall_below_source_window@0"] == 0.0 and f["gain_rate_other_windows@0"] == 1.0
    assert f["gain_recall_below_source_window@0.05"] == 1.0 and f["auroc_below_source_gain_window"] == 0.0
    # the calibration's offset is taken off the gain before the flag
    o = validate(*args, source_miou=[0.45, 0.6, 0.6, 0.3], window=2, source_estimate=[0.7, 0.85, 0.78, 0.9],
                 gain_offset=0.2)
    assert o["gain_recall_below_source"] == 1.0 and o["gain_rate_other_frames"] == 1.0
    # the classes kept (NaN: not known, no flag) at min_kept 0.85, and either flag beside the gain's
    k = validate(*args, source_miou=[0.45, 0.6, 0.6, 0.3], window=2, source_estimate=[0.7, 0.85, 0.78, 0.9],
                 kept=[1.0, 1.0, 0.7, float("nan")], min_kept=0.85)
    assert k["kept_known_frames"] == 0.75 and k["auroc_below_source_kept"] == 0.75  # below: 1.0, 0.7; other: 1.0
    assert k["kept_recall_below_source"] == 0.5 and k["kept_rate_other_frames"] == 0.0
    # either flag: the gain catches frame 1, kept frame 2; the gain also flags frame 3
    assert k["source_recall_below_source"] == 1.0 and k["source_rate_other_frames"] == 0.5
    assert "kept_known_frames" not in f                          # without the live kept


# ------------------------------------------------------------------------------------ the guard
@pytest.fixture(scope="module")
def clear_frames():
    from tta_perception.runtime.preprocess import to_tensor
    from tta_perception.training import render_seg_set

    rgb, _ = render_seg_set(8, seed=3, progress=False)
    return to_tensor(rgb)


@pytest.fixture(scope="module")
def driveseg():
    from tta_perception.runtime.model_loader import load_model

    return load_model("driveseg").model


def adapter_for(model, method="tent"):
    from tta_perception.engine import build_method
    from tta_perception.runtime.adapter import build_adapter

    torch.manual_seed(0)
    return build_adapter(build_method(method, copy.deepcopy(model)), window=4, adapt_every=4, background=False)


def collapse(adapter, cls: int = 0, by: float = 1e4) -> None:
    """Make the adapted model paint every pixel with one class (its classifier's bias; a negative
    ``by``: never paint it), frozen there."""
    st = adapter.state_dict()
    mods = st["method_state"]["modules"]["model"]
    key = [k for k in mods if k.endswith("bias") and mods[k].numel() == adapter.method.num_classes][-1]
    mods[key] = mods[key].clone()
    mods[key][cls] += by
    adapter.load_state_dict(st)
    adapter.set_enabled(False)


def test_classes_kept_counts_the_source_classes_the_output_still_paints():
    from tta_perception.runtime.guard import classes_kept

    src = torch.zeros(100, 100, dtype=torch.long)
    src[:, 60:] = 1                       # 40 %
    src[:, 90:] = 2                       # 10 %
    src[0, 0] = 3                         # one pixel: under 1 % of the frame, not counted
    assert classes_kept(src.clone(), src, 4) == 1.0
    out = src.clone()
    out[:, 90:] = 1                       # class 2 eaten by class 1
    assert classes_kept(out, src, 4) == pytest.approx(2 / 3)
    out = src.clone()
    out[:, 95:] = 0                       # half of class 2 left: still kept
    assert classes_kept(out, src, 4) == 1.0
    assert classes_kept(out, torch.full_like(src, 3), 4) == 0.0


def test_guard_brings_a_collapsed_model_back(driveseg, clear_frames):
    from tta_perception.runtime.frame_path import FramePath
    from tta_perception.runtime.guard import CollapseGuard, GuardSettings

    ad = adapter_for(driveseg)
    guard = CollapseGuard(ad, GuardSettings(check_every=1, window=3))
    path = FramePath(ad, flow=False, guard=guard)
    src = guard._source
    collapse(ad)
    recs = [path.run(clear_frames[i % 8:i % 8 + 1])[0] for i in range(3)]
    assert [r.recovery is not None for r in recs] == [False, False, True]
    assert recs[-1].recovery.to == "source" and "lost its classes" in recs[-1].recovery.reason
    assert guard.counts["guard_recoveries"] == 1 and guard.counts["guard_to_source"] == 1
    after = path.run(clear_frames[3:4])[0]
    with torch.no_grad():
        ref = src(clear_frames[3:4])[0]
    assert (after.logits.argmax(0) == ref.argmax(0)).float().mean() > 0.95   # tent's source = the source model
    ad.close()


def test_guard_returns_to_the_last_healthy_state_and_never_fires_on_a_healthy_run(driveseg, clear_frames):
    from tta_perception.runtime.frame_path import FramePath
    from tta_perception.runtime.guard import CollapseGuard, GuardSettings

    ad = adapter_for(driveseg)
    guard = CollapseGuard(ad, GuardSettings(check_every=1, window=2))
    path = FramePath(ad, flow=False, guard=guard)
    for i in range(16):                                 # healthy Tent on clear source frames
        assert path.run(clear_frames[i % 8:i % 8 + 1])[0].recovery is None
    assert guard.counts["guard_checks"] == 16 and guard.counts["guard_bad_checks"] == 0
    assert guard._healthy is not None
    steps = ad.stats()["adapt_steps"]
    collapse(ad)
    recs = [path.run(clear_frames[i:i + 1])[0].recovery for i in range(2)]
    first = next(r for r in recs if r is not None)                 # at the latest on the window's 2nd check
    assert first.to == "last_healthy"
    assert ad.stats()["adapt_steps"] == steps          # the counters of the run are kept
    ad.close()


def test_the_kept_threshold_comes_from_the_method_calibration(driveseg):
    from tta_perception.runtime.guard import KEPT_DEFAULT, CollapseGuard, GuardSettings, calibrated_min_kept
    from tta_perception.runtime.quality import load_calibration

    assert calibrated_min_kept({"guard_signals": {"kept_mean_p1": 0.874}}) == pytest.approx(0.85)
    assert calibrated_min_kept({"guard_signals": {"kept_mean_p1": 0.9}}) == pytest.approx(0.9)
    assert calibrated_min_kept({"guard_signals": {"reliable_frames": 0}}) is None and calibrated_min_kept(None) is None
    cal = load_calibration("driveseg", "tent")[0]
    ad = adapter_for(driveseg)
    measured = cal["guard_signals"]["kept_mean_p1"]
    assert CollapseGuard(ad, calibration=cal).min_kept == calibrated_min_kept(cal) <= measured < calibrated_min_kept(cal) + 0.05
    assert CollapseGuard(ad).min_kept == KEPT_DEFAULT                                   # nothing measured
    assert CollapseGuard(ad, GuardSettings(min_kept=0.3), calibration=cal).min_kept == 0.3   # a setting wins
    assert CollapseGuard(ad, calibration=cal).stats()["guard_min_kept"] == calibrated_min_kept(cal)
    ad.close()


def test_guard_notices_a_small_class_eaten_while_agreement_stays_high(driveseg, clear_frames):
    """A slow collapse: one class the source model paints is gone, every other pixel agrees. The
    agreement and class-ratio checks stay good; the classes kept over the window do not."""
    from tta_perception.runtime.frame_path import FramePath
    from tta_perception.runtime.guard import CollapseGuard, GuardSettings

    frames = clear_frames[:3]
    with torch.no_grad():
        areas = torch.stack([torch.bincount(z.argmax(0).reshape(-1), minlength=z.shape[0])
                             for z in driveseg(frames)]).min(0).values
    share = areas.float() / frames[0, 0].numel()
    small = int(torch.where(share >= 0.02, share, torch.full_like(share, 2.0)).argmin())  # on >= 2 % of each frame
    assert share[small] < 0.2
    for min_kept, fires in ((0.0, False), (0.99, True)):
        ad = adapter_for(driveseg)
        guard = CollapseGuard(ad, GuardSettings(check_every=1, window=3, source_reliable=0.0, min_kept=min_kept))
        path = FramePath(ad, flow=False, guard=guard)
        collapse(ad, small, by=-1e4)
        recs = [path.run(frames[i:i + 1])[0] for i in range(3)]
        assert guard.counts["guard_bad_checks"] == 0                 # agreement and class ratio are fine
        assert guard.last["kept"] < 1.0 and guard.last["agreement"] > 0.75
        assert (recs[-1].recovery is not None) == fires
        if fires:
            assert "kept" in recs[-1].recovery.reason and recs[-1].recovery.to == "source"
        ad.close()


def test_guard_keeps_blind_frames_out_of_the_window_and_recovers_from_nan(driveseg, clear_frames):
    from tta_perception.runtime.frame_path import FramePath
    from tta_perception.runtime.guard import CollapseGuard, GuardSettings
    from tta_perception.runtime.quality import QualityEstimator

    ad = adapter_for(driveseg)
    guard = CollapseGuard(ad, GuardSettings(check_every=1, window=2))
    path = FramePath(ad, flow=False, guard=guard, quality=QualityEstimator(None))
    path.run(clear_frames[:1])
    before = ad.stats()["window_len"]
    black = torch.zeros_like(clear_frames[:1])
    recs = [path.run(black)[0] for _ in range(6)]            # a lens cap: nothing joins the window
    assert ad.stats()["window_len"] == before and guard.counts["guard_blind_frames"] == 6
    assert all(r.quality.level == ERROR and "blind" in r.quality.reason for r in recs)
    st = ad.state_dict()
    mods = st["method_state"]["modules"]["model"]
    key = next(k for k, v in mods.items() if v.is_floating_point() and k.endswith("weight"))
    mods[key] = torch.full_like(mods[key], float("nan"))
    ad.load_state_dict(st)
    rec = path.run(clear_frames[1:2])[0]
    assert rec.recovery is not None and "non-finite" in rec.recovery.reason
    assert torch.isfinite(path.run(clear_frames[2:3])[0].logits).all()
    ad.close()


def test_guard_checks_each_camera_and_leaves_nan_input_alone(driveseg, clear_frames):
    """Each camera is checked every check_every of its own frames (a capped camera does not hide the
    other one); a NaN input is kept out and is no reason to recover."""
    from tta_perception.runtime.frame_path import FramePath
    from tta_perception.runtime.guard import CollapseGuard, GuardSettings

    ad = adapter_for(driveseg)
    guard = CollapseGuard(ad, GuardSettings(check_every=2, window=2, source_reliable=0.0))
    path = FramePath(ad, flow=False, guard=guard)
    black = torch.zeros_like(clear_frames[:1])
    for i in range(8):  # cameras arrive together; 'rear' is capped
        path.run(torch.cat([clear_frames[i:i + 1], black]), cameras=["front", "rear"])
    assert guard.counts["guard_checks"] == 4 and guard.counts["guard_blind_frames"] == 8
    nan = torch.full_like(clear_frames[:1], float("nan"))
    recs = [path.run(nan)[0] for _ in range(3)]
    assert all(r.recovery is None for r in recs) and guard.counts["guard_recoveries"] == 0
    assert guard.counts["guard_nonfinite_inputs"] == 3 and guard.counts["guard_nonfinite"] == 0
    ad.close()


def test_the_source_reference_judges_every_nth_frame_and_the_guard_reuses_its_pass(driveseg, clear_frames):
    """``quality_source_every``: on every N-th frame of each camera the source model's own estimate
    beside the adapted output's; a collapsed model is estimated below it (WARN); the guard's check on
    the same frame costs no second forward pass of the one frozen source model they share."""
    from tta_perception.runtime.frame_path import FramePath
    from tta_perception.runtime.guard import CollapseGuard, GuardSettings
    from tta_perception.runtime.reference import build_reference

    ad = adapter_for(driveseg)
    ref = build_reference(ad, "driveseg", 2)
    guard = CollapseGuard(ad, GuardSettings(check_every=2, window=50), source=ref.model)
    assert guard._source is ref.model and build_reference(ad, "driveseg", 0) is None
    estimator = QualityEstimator(cal(("conf",), (0.0, 1.0)))     # the adapted output's estimate: its confidence
    path = FramePath(ad, flow=False, quality=estimator, guard=guard, reference=ref)
    passes = []
    ref.model.register_forward_hook(lambda *a: passes.append(1))
    healthy = [path.run(clear_frames[i:i + 1], ["a"])[0].quality for i in range(4)]
    assert [math.isfinite(q.source_estimate) for q in healthy] == [False, True, False, True]
    with torch.no_grad():
        src = ref.model(clear_frames[1:2])
    assert healthy[1].source_estimate == pytest.approx(ref.estimate(frame_signals(src[0], clear_frames[1])), abs=1e-6)
    assert len(passes) == 3 and guard.counts["guard_checks"] == 2   # 2 judged frames + the line above
    st = ad.state_dict()                                         # a degraded model: flat, unsure outputs
    mods = st["method_state"]["modules"]["model"]
    for k in [k for k in mods if mods[k].shape[:1] == (ad.method.num_classes,)][-2:]:
        mods[k] = mods[k] * 0.05
    ad.load_state_dict(st)
    ad.set_enabled(False)
    bad = [path.run(clear_frames[i:i + 2], ["a", "b"]) for i in range(0, 4, 2)]
    judged = [r.quality for pair in bad for r in pair if math.isfinite(r.quality.source_estimate)]
    assert len(judged) == 2                                      # camera a's 6th frame, b's 2nd
    assert all(q.gain < 0 and q.level >= WARN for q in judged), judged
    ad.close()


def test_a_camera_losing_a_class_is_seen_while_its_estimate_and_gain_say_ok(driveseg, clear_frames):
    """The reference's ``kept``: per camera, the mean share of the source model's classes the
    published outputs keep over its last KEPT_WINDOW reliable judged frames (NaN before); with a
    threshold (``quality_min_kept``), a model that stops painting one class is WARN by it alone; a
    reset forgets what the old state kept."""
    from tta_perception.runtime.frame_path import FramePath
    from tta_perception.runtime.reference import KEPT_WINDOW, build_reference

    ad = adapter_for(driveseg)
    ref = build_reference(ad, "driveseg", 1)
    # the estimate is the confidence; the gain never flags here (threshold -1), min_kept 0.95
    q = QualityEstimator(cal(("conf",), (0.0, 1.0), guard_signals={"kept_mean_p1": 0.95}), gain_warn_below=-1.0,
                         min_kept=-1)
    path = FramePath(ad, flow=False, quality=q, reference=ref)
    ad.set_enabled(False)
    healthy = [path.run(clear_frames[i:i + 1])[0].quality for i in range(KEPT_WINDOW)]
    assert all(math.isnan(h.kept) for h in healthy[:-1]) and healthy[-1].kept == 1.0   # the source's own classes
    assert all(h.level == OK for h in healthy)
    collapse(ad, cls=3, by=-1e4)                                 # class 3 never painted again (3-12 % of these frames)
    lost = [path.run(clear_frames[i:i + 1])[0].quality for i in range(8)]
    assert [round(x.kept, 3) for x in lost] == sorted((round(x.kept, 3) for x in lost), reverse=True)
    assert lost[-1].kept < q.min_kept and lost[-1].level == WARN
    assert all(x.estimate > 0.9 and x.gain > -0.1 for x in lost)  # what the estimate and the gain see: nothing
    assert math.isnan(path.run(clear_frames[:1], ["b"])[0].quality.kept)  # another camera: its own window
    path.reset()                                                 # a reset: the old state's classes say nothing
    assert math.isnan(path.run(clear_frames[:1])[0].quality.kept)
    ad.close()


def test_guard_settings_are_checked():
    from tta_perception.runtime.guard import GuardSettings

    for kw, msg in (({"check_every": 0}, "check_every"), ({"min_agreement": 1.5}, "min_agreement"),
                    ({"recover_to": "yesterday"}, "recover_to"), ({"min_class_ratio": -1}, "min_class_ratio"),
                    ({"min_kept": 1.2}, "min_kept")):
        with pytest.raises(ValueError, match=msg):
            GuardSettings(**kw)


# ------------------------------------------------------------------------------------ the benchmark
def test_bench_validates_the_estimate_and_reports_the_guard(tmp_path, capsys):
    """A streaming seg bench run scores every frame's estimate against the truth (printed, CSV,
    results.json) and a '<method>+g' row reports the guard's checks and worst gaps to source."""
    from tta_perception.cli.main import main

    out = tmp_path / "run"
    args = ["bench", "--task", "seg", "--stream", "--sequence", "dynamic", "--cycles", "3", "--stride", "40",
            "--size", "32x64", "--threads", "1", "--no-ceiling", "--workers", "1", "--device", "cpu",
            "--methods", "source,tent,tent+g", "--no-progress", "--cache", str(tmp_path / "cache"), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "label-free quality estimate against the truth" in printed and "collapse guard" in printed
    res = json.loads((out / "results.json").read_text())
    q = res["quality"]["dynamic"]["methods"]
    assert sorted(q) == ["source", "tent", "tent+g"]
    for m, block in q.items():
        v = block["per_seed"][0]
        assert v["frames"] == 90 and -1.0 <= v["spearman_accuracy"] <= 1.0 and v["mae_points"] >= 0.0
        assert set(block["mae_points_by_phase"]) == {"clear", "rain", "fog", "dusk", "night", "night_rain"}
        assert sum(block["levels"].values()) == 90 and 0.0 < v["cost_percent"]
    assert q["source"]["per_seed"][0]["auroc_below_source"] is None  # no frame is below itself (JSON null)
    assert "auroc_below_source_gain" not in q["source"]["per_seed"][0]  # nor is there a gain over itself
    assert "auroc_below_source_gain" in q["tent"]["per_seed"][0] and "gain AUROC" in printed
    run = next(r for r in res["runs"] if r["method"] == "tent")
    assert len(run["series"]["quality"]) == len(run["series"]["accuracy"]) == 90
    g = res["guard"]["dynamic"]["tent+g"]
    assert g["guard_checks"] == 9 and g["base"] == "tent" and g["seeds"] == [0]
    assert g["hours"] == pytest.approx(3 * 1200 / 10 / 3600) and math.isfinite(g["worst_cycle_gap"])
    tent, guarded = (next(r for r in res["runs"] if r["method"] == m) for m in ("tent", "tent+g"))
    assert g["gain"] == pytest.approx(guarded["overall"] - tent["overall"])
    # a recovery is false only where it cost the seed's mIoU
    assert g["false_recoveries"] == (g["guard_recoveries"] if g["gain"] < -0.1 else 0)
    assert (out / "quality_dynamic.csv").read_text().startswith("method,")
    assert res["quality"]["dynamic"]["png"].endswith("quality_dynamic.png") and (out / "quality_dynamic.png").stat().st_size


def test_bench_levels_flag_the_frames_estimated_below_the_source_model(tmp_path):
    """``--quality-source-every 1``: each output's level takes the estimated gain over the source
    model; the live source estimate is the source run's own estimate of the same frame, so every frame
    estimated below it is at least WARN, and the adaptation itself is untouched."""
    from tta_perception.cli.main import main

    def run(out, *extra):
        args = ["bench", "--task", "seg", "--stream", "--sequence", "dynamic", "--cycles", "2", "--stride", "40",
                "--size", "32x64", "--threads", "1", "--no-ceiling", "--workers", "1", "--device", "cpu",
                "--methods", "source,tent", "--no-progress", "--no-plot", "--cache", str(tmp_path / "cache"),
                "--out", str(tmp_path / out), *extra]
        assert main(args) == 0
        res = json.loads((tmp_path / out / "results.json").read_text())
        return {r["method"]: r for r in res["runs"]}

    plain, judged = run("plain"), run("judged", "--quality-source-every", "1")
    v = json.loads((tmp_path / "judged" / "results.json").read_text())["quality"]["dynamic"]["methods"]["tent"]
    v = v["per_seed"][0]
    for key in ("gain_recall_below_source", "gain_rate_other_frames", "auroc_below_source_gain_window",
                "gain_recall_below_source_window@0", "gain_rate_other_windows@0.1"):
        assert v[key] is None or 0.0 <= v[key] <= 1.0, key
    tent, src = judged["tent"]["series"], judged["source"]["series"]
    assert tent["y"] == plain["tent"]["series"]["y"] and tent["quality"] == plain["tent"]["series"]["quality"]
    assert src["level"] == plain["source"]["series"]["level"]       # the source model has no gain over itself
    gain = np.asarray(tent["quality"]) - np.asarray(src["quality"])
    level = np.asarray(tent["level"])
    assert (gain < -1e-3).any() and (gain > 1e-3).any()
    assert (level[gain < -1e-3] >= WARN).all()
    assert (level[gain < -1e-3] > np.asarray(plain["tent"]["series"]["level"])[gain < -1e-3]).any()
    assert "kept" not in plain["tent"]["series"] and len(tent.get("kept", [None] * 60)) == 60
    for key in ("kept_known_frames", "kept_recall_below_source", "source_recall_below_source"):
        assert v.get(key) is None or 0.0 <= v[key] <= 1.0, key
    assert main(["bench", "--task", "seg", "--methods", "tent", "--quality-source-every", "1"]) == 2  # not --stream
