"""The quality of each output and the collapse guard, published by tta_node over real DDS with the real
rclpy (one message per answered frame under the input's header, a lens cap, several cameras,
/diagnostics, parameters refused and changed live) and scored by the evaluator against the truth."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_ros_helpers as H  # noqa: E402
from test_ros_helpers import harness, ros  # noqa: E402,F401  (fixtures)

H.require_rclpy()

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from test_ros_node import SEG, Rig, stamp_is  # noqa: E402

from tta_perception.ros.evaluator import Evaluator, quality_topic_of  # noqa: E402
from tta_perception.ros.qos import output_qos  # noqa: E402
from tta_perception.runtime import params as P  # noqa: E402
from tta_perception.runtime.diagnostics import camera_of, is_node_status  # noqa: E402
from tta_perception.runtime.messages import weather_json  # noqa: E402
from tta_perception.world.schedule import load_schedule  # noqa: E402

LEVEL_NAMES = ("OK", "WARN", "ERROR")


def level_of(status) -> int:
    """A DiagnosticStatus level as an int (rclpy gives the byte field as bytes)."""
    return status.level[0] if isinstance(status.level, (bytes, bytearray)) else int(status.level)


def values_of(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def quality_out(rig, camera: str = ""):
    name = f"{camera}/quality" if camera else "quality"
    col = rig.out(name, DiagnosticArray)
    rig.matched(name)
    return col


def node_statuses(diag, ns):
    """Every node status of the node in ``ns`` received so far."""
    return [st for arr in list(diag.messages) for st in arr.status if is_node_status(st.name, ns)]


# ------------------------------------------------------------------------------- one camera
def test_one_quality_message_per_answered_frame_with_the_input_header(ros):
    rig = Rig(ros, **SEG)
    quality = quality_out(rig)
    ids = rig.out("class_ids")
    rig.matched("class_ids")
    fqn = rig.node.get_fully_qualified_name()
    for i in range(4):
        rig.send_until(lambda: H.image_msg(H.frame(32, 64, seed=i), stamp=(40 + i, 7 + i), frame_id=f"cam{i}"),
                       "class_ids", stamp_is(40 + i, 7 + i))
    H.wait_until(lambda: rig.count("frames_processed") == len(ids.messages), what="outputs of every frame")
    answered = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in ids.messages]
    got = quality.wait(len(answered))
    # one quality message per answered frame, under that frame's header (stamp and frame_id unchanged)
    assert sorted((m.header.stamp.sec, m.header.stamp.nanosec) for m in got) == sorted(answered)
    for m in got:
        assert len(m.status) == 1
        st, v = m.status[0], values_of(m.status[0])
        k = m.header.stamp.sec - 40
        assert m.header.frame_id == f"cam{k}" == st.hardware_id
        assert st.name == f"{fqn}: camera quality"
        assert 0.0 <= float(v["estimate"]) <= 1.0 and len(v["estimate"].split(".")[1]) == 4
        assert v["level"] == LEVEL_NAMES[level_of(st)]
        # the tiny test network has no calibration: its estimate is its mean confidence, marked so
        assert v["calibrated"] == "false" and v["estimate"] == v["conf"]
        assert "uncalibrated" in st.message and "uncalibrated" in v["calibration"]
        assert v["source_estimate"] == v["gain"] == "nan"     # quality_source_every: 0, the default
        for key in ("ent", "pred_ent", "lum", "contrast", "sharp"):
            assert 0.0 <= float(v[key]) <= 1.0, key
    # /diagnostics: the recent mean, its level and where the calibration came from
    d = rig.node.diagnostics()
    assert 0.0 < float(d["quality_estimate"]) <= 1.0 and d["quality_level"] in LEVEL_NAMES
    assert "uncalibrated" in d["quality_calibration"]
    assert "guard_checks" not in d  # the guard is off by default
    assert P.SPEC["guard"].default is P.GUARD_DEFAULT is False


def test_driveseg_says_whether_its_estimate_is_calibrated(ros):
    from tta_perception.models.checkpoint import read_manifest

    manifest = read_manifest()
    if "driveseg" not in manifest:
        pytest.skip("no committed weights for driveseg")
    rig = Rig(ros, model="driveseg", method="source", qos_reliability="reliable")
    assert rig.count("state") == "active", rig.node.diagnostics()["config_error"]
    quality = quality_out(rig)
    rig.send_until(lambda: H.image_msg(H.frame(128, 256), "bgra8", stamp=(3, 4)), "class_ids", stamp_is(3, 4))
    v = values_of(quality.wait(1, predicate=stamp_is(3, 4))[0].status[0])
    # TODO(lead): once `calibrate-quality` has written driveseg's calibration into the manifest, this is 'true'
    calibrated = bool((manifest["driveseg"].get("quality_calibration") or {}))
    assert v["calibrated"] == ("true" if calibrated else "false")
    assert v["calibration"].startswith("manifest driveseg") if calibrated else "uncalibrated" in v["calibration"]
    assert 0.0 <= float(v["estimate"]) <= 1.0


def test_a_lens_cap_is_an_error_with_its_reason_and_the_node_status_follows(ros):
    rig = Rig(ros, **dict(SEG, quality_window=3))
    diag = H.Collector(ros.client, DiagnosticArray, "/diagnostics", output_qos(50))
    quality = quality_out(rig)
    rig.send_until(lambda: H.image_msg(H.frame(32, 64), stamp=(1, 0)), "class_ids", stamp_is(1))
    black = np.zeros((32, 64, 3), np.uint8)
    for k in range(2, 6):
        rig.send_until(lambda: H.image_msg(black, stamp=(k, 0)), "class_ids", stamp_is(k))
    for m in quality.wait(4, predicate=lambda m: m.header.stamp.sec >= 2):
        st = m.status[0]
        assert level_of(st) == 2 and "blind camera" in st.message
        assert values_of(st)["level"] == "ERROR" and float(values_of(st)["contrast"]) == 0.0
    assert rig.node.diagnostics()["quality_level"] == "ERROR"
    # the node's own status is ERROR while the camera sees nothing, and says why
    st = H.wait_until(lambda: next((s for s in reversed(node_statuses(diag, rig.ns)) if level_of(s) == 2), None),
                      what="an ERROR node status")
    assert "blind camera" in st.message and values_of(st)["quality_level"] == "ERROR"
    # the cap comes off: after a window of frames that see something the ERROR is over
    for k in range(10, 14):
        rig.send_until(lambda: H.image_msg(H.frame(32, 64, seed=k), stamp=(k, 0)), "class_ids", stamp_is(k))
    assert rig.node.diagnostics()["quality_level"] != "ERROR"
    assert rig.node.session.report.quality_alarm() is None  # an uncalibrated mean confidence alarms nobody


def test_two_cameras_publish_their_own_quality(ros):
    rig = Rig(ros, **dict(SEG, cameras=["front", "rear"]))
    cols = {c: quality_out(rig, c) for c in ("front", "rear")}
    diag = H.Collector(ros.client, DiagnosticArray, "/diagnostics", output_qos(50))
    fqn = rig.node.get_fully_qualified_name()
    for k, c in enumerate(("front", "rear")):
        rig.send_until(lambda: H.image_msg(H.frame(32, 64, seed=k), stamp=(70 + k, 5), frame_id=f"{c}_optical"),
                       f"{c}/class_ids", stamp_is(70 + k, 5), topic=f"{c}/image")
    for k, c in enumerate(("front", "rear")):
        m = cols[c].wait(1, predicate=stamp_is(70 + k, 5))[0]
        assert m.header.frame_id == f"{c}_optical" == m.status[0].hardware_id
        assert m.status[0].name == f"{fqn}: {c} quality"
        assert not any(x.header.frame_id != f"{c}_optical" for x in cols[c].messages)  # never the other's
    # each camera's status carries its own recent quality
    def camera_rows():
        rows = {}
        for arr in list(diag.messages):
            for st in arr.status:
                cam = camera_of(st.name, rig.ns)
                if cam is not None and values_of(st).get("quality_level"):
                    rows[cam] = values_of(st)
        return rows if set(rows) == {"front", "rear"} else None

    rows = H.wait_until(camera_rows, what="both cameras' quality in /diagnostics")
    assert all(0.0 < float(r["quality_estimate"]) <= 1.0 for r in rows.values())


def test_a_camera_that_stops_no_longer_raises_the_node_status_by_its_last_quality(ros, monkeypatch):
    """The rear camera is capped (a forced ERROR: the node status is ERROR), then stops while the front one
    goes on: once its last frame is older than ``QUALITY_STALE_S`` the node status follows the cameras
    that still send; the rear camera's last quality is still shown in its own status."""
    from tta_perception.runtime import diagnostics as D

    monkeypatch.setattr(D, "QUALITY_STALE_S", 1.0)
    rig = Rig(ros, **dict(SEG, cameras=["front", "rear"], quality_window=2))
    black = np.zeros((32, 64, 3), np.uint8)
    for k in range(2):
        rig.send_until(lambda: H.image_msg(H.frame(32, 64, seed=k), stamp=(20 + k, 0)), "front/class_ids",
                       stamp_is(20 + k), topic="front/image")
        rig.send_until(lambda: H.image_msg(black, stamp=(20 + k, 0)), "rear/class_ids", stamp_is(20 + k),
                       topic="rear/image")
    report = rig.node.session.report
    alarm = report.quality_alarm()
    assert alarm is not None and alarm[0] == "error" and "on camera rear" in alarm[1] and "blind camera" in alarm[1]
    level, message, _, _ = report.status(10**9)
    assert level == "error" and "blind camera" in message
    time.sleep(1.2)  # the rear camera has stopped; the front one goes on
    rig.send_until(lambda: H.image_msg(H.frame(32, 64, seed=5), stamp=(30, 0)), "front/class_ids", stamp_is(30),
                   topic="front/image")
    assert report.quality_alarm() is None and report.quality_alarm("rear") is None
    level, message, _, _ = report.status(10**9)
    assert level != "error" and "blind camera" not in message
    assert rig.node.session.camera_diagnostics()["rear"]["quality_level"] == "ERROR"  # its last, still shown
    assert rig.count("state") == "active" and rig.count("quality_level") != "ERROR"


# ----------------------------------------------------------------------------------- parameters
def test_quality_and_guard_parameters_are_checked_and_change_live(ros, tmp_path):
    rig = Rig(ros, **SEG)
    pipe, adapter = rig.node._pipeline, rig.node._pipeline.adapter
    bad = [("quality_warn_below", 1.5, "quality_warn_below"), ("quality_error_below", -0.5, "in [0, 1], or -1"),
           ("quality_window", 0, "quality_window"), ("guard_window", 0, "guard_window"),
           ("guard_check_every", 0, "guard_check_every"), ("guard_recover_to", "yesterday", "last_healthy, source"),
           ("guard_min_agreement", 1.5, "guard_min_agreement"), ("quality_calibration", str(tmp_path / "none.json"),
                                                                   "not found"),
           ("quality_source_every", -1, "quality_source_every"), ("quality_gain_warn_below", 2.0,
                                                                 "quality_gain_warn_below"),
           ("quality_min_kept", 1.5, "quality_min_kept")]
    for name, value, why in bad:
        result = rig.node.set_parameters([Parameter(name, value=value)])[0]
        assert not result.successful and why in result.reason and "\n" not in result.reason, (name, result.reason)
    result = rig.node.set_parameters_atomically([Parameter("quality_warn_below", value=0.4),
                                                 Parameter("quality_error_below", value=0.6)])
    assert not result.successful and "must not be above" in result.reason
    not_json = tmp_path / "cal.json"
    not_json.write_text('{"format": "something else"}')
    result = rig.node.set_parameters([Parameter("quality_calibration", value=str(not_json))])[0]
    assert not result.successful and "not a quality calibration" in result.reason
    # nothing refused reached the running estimator
    assert (pipe.quality.warn_below, pipe.quality.error_below) == (0.75, 0.5)

    # live: new thresholds, the guard on, and quality off; the adapted model is never rebuilt
    assert rig.node.set_parameters_atomically([Parameter("quality_warn_below", value=0.9),
                                               Parameter("quality_error_below", value=0.2)]).successful
    assert (rig.node._pipeline.quality.warn_below, rig.node._pipeline.quality.error_below) == (0.9, 0.2)
    assert rig.node.set_parameters_atomically([Parameter("guard", value=True),
                                               Parameter("guard_check_every", value=1)]).successful
    for k in range(3):
        rig.send_until(lambda: H.image_msg(H.frame(32, 64, seed=k), stamp=(90 + k, 0)), "class_ids", stamp_is(90 + k))
    d = rig.node.diagnostics()
    assert d["guard_checks"] >= 2 and d["guard_recoveries"] == 0 and d["guard_last_reason"] == ""
    assert d["quality_gain"] == "nan"                     # off by default: no source model's estimate
    # the estimated gain over the source model on every frame; the guard shares its frozen source model
    quality = quality_out(rig)
    assert rig.node.set_parameters([Parameter("quality_source_every", value=1)])[0].successful
    ref = rig.node._pipeline.frame_path.reference
    assert ref is not None and ref.every == 1
    assert rig.node.set_parameters([Parameter("guard_window", value=7)])[0].successful   # a new guard: shares it
    assert rig.node._pipeline.frame_path.guard._source is ref.model
    rig.send_until(lambda: H.image_msg(H.frame(32, 64, seed=5), stamp=(95, 0)), "class_ids", stamp_is(95))
    v = values_of(quality.wait(1, predicate=stamp_is(95))[0].status[0])
    assert float(v["gain"]) == pytest.approx(float(v["estimate"]) - float(v["source_estimate"]), abs=2e-4)
    assert "kept" in v and math.isfinite(float(rig.node.diagnostics()["quality_gain"]))
    assert "quality_kept" in rig.node.diagnostics() and rig.node._pipeline.quality.min_kept == 0.0  # off by default
    assert rig.node.set_parameters([Parameter("quality_min_kept", value=-1.0)])[0].successful  # the calibrated one
    assert 0.5 <= rig.node._pipeline.quality.min_kept <= 1.0
    assert rig.node.set_parameters([Parameter("quality", value=False)])[0].successful
    assert "quality" not in rig.node._pubs and rig.node._pipeline.quality is None
    rig.send_until(lambda: H.image_msg(H.frame(32, 64), stamp=(99, 0)), "class_ids", stamp_is(99))
    assert "quality_estimate" not in rig.node.diagnostics()
    assert rig.node._pipeline is pipe and pipe.adapter is adapter and rig.count("reloads") == 0


def test_quality_comes_and_goes_without_touching_the_other_outputs(ros):
    """``quality`` off and on adds or removes only the quality publisher (class_ids and the latched
    outputs stay the same publishers); changed while the node is inactive, it is in force at activate."""
    from rclpy.lifecycle import TransitionCallbackReturn

    rig = Rig(ros, **SEG)
    before = dict(rig.node._pubs)
    assert rig.node.set_parameters([Parameter("quality", value=False)])[0].successful
    assert set(before) - set(rig.node._pubs) == {"quality"}
    assert all(rig.node._pubs[k] is pub for k, pub in before.items() if k != "quality")
    assert rig.node.set_parameters([Parameter("quality", value=True)])[0].successful
    assert set(rig.node._pubs) == set(before) and rig.node._pubs["class_ids"] is before["class_ids"]
    # off while inactive, on again while inactive: at activate the quality messages flow
    assert rig.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert rig.node.set_parameters([Parameter("quality", value=False)])[0].successful
    assert rig.node.set_parameters([Parameter("quality", value=True)])[0].successful
    assert rig.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    quality = quality_out(rig)
    rig.send_until(lambda: H.image_msg(H.frame(32, 64), stamp=(7, 0)), "class_ids", stamp_is(7))
    assert quality.wait(1, predicate=stamp_is(7))[0].status[0].values
    # and off while inactive: nothing is advertised, nothing published
    assert rig.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert rig.node.set_parameters([Parameter("quality", value=False)])[0].successful
    assert rig.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert "quality" not in rig.node._pubs and rig.node._pipeline.quality is None
    rig.send_until(lambda: H.image_msg(H.frame(32, 64), stamp=(8, 0)), "class_ids", stamp_is(8))


def test_a_start_up_value_out_of_range_refuses_configure(ros):
    rig = Rig(ros, **dict(SEG, quality_error_below=2.0))
    d = rig.node.diagnostics()
    assert d["state"] != "active" and "quality_error_below" in d["config_error"]
    with pytest.raises(ValueError, match="must not be above 'quality_warn_below'"):
        P.node_config({"quality_warn_below": 0.3, "quality_error_below": 0.6})


# ------------------------------------------------------------------------------------ evaluator
def _img(ids: np.ndarray, stamp_ns: int) -> Image:
    msg = H.raw_msg("mono8", ids.shape[0], ids.shape[1], ids.shape[1], np.ascontiguousarray(ids, np.uint8).tobytes(),
                    stamp=(stamp_ns // 10**9, stamp_ns % 10**9))
    return msg


def _quality_msg(stamp_ns: int, estimate: float, level: int) -> DiagnosticArray:
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    arr = DiagnosticArray()
    arr.header.stamp.sec, arr.header.stamp.nanosec = stamp_ns // 10**9, stamp_ns % 10**9
    st = DiagnosticStatus(level=bytes([level]), name="/tta_node: camera quality")
    st.values = [KeyValue(key="estimate", value=f"{estimate:.4f}"), KeyValue(key="level", value=LEVEL_NAMES[level])]
    arr.status = [st]
    return arr


def test_the_evaluator_validates_the_estimate_against_the_truth(ros, tmp_path):
    added = H.added_nodes(ros)
    h = next(added)
    try:
        ns = h.namespace()
        ev = h.add(Evaluator(namespace=ns, context=h.ctx, parameter_overrides=[
            Parameter("prediction_topics", value=[f"{ns}/a/class_ids"]), Parameter("num_classes", value=4),
            Parameter("output_dir", value=str(tmp_path)), Parameter("prefix", value="q_"),
            Parameter("flicker", value=False), Parameter("plot", value=False)]))
        assert quality_topic_of(f"{ns}/a/class_ids") == f"{ns}/a/quality" and quality_topic_of("class_ids") == "quality"
        pubs = {name: h.client.create_publisher(DiagnosticArray if name == "a/quality" else Image, f"{ns}/{name}",
                                                output_qos(50))
                for name in ("camera/ground_truth/class_ids", "a/class_ids", "a/quality")}
        wpub = h.client.create_publisher(String, f"{ns}/weather", output_qos(50))
        for pub in [*pubs.values(), wpub]:
            H.wait_until(lambda: pub.get_subscription_count() > 0, what="evaluator subscriptions")
        truth = np.tile(np.arange(4, dtype=np.uint8).repeat(4), (8, 1))  # (8, 16): 4 classes, 4 columns each
        fog = load_schedule("clear2fog").weather_at(0)
        estimates = []
        for k in range(12):
            stamp = (50 + k) * 10**9
            pred = truth.copy()
            pred[:, : k + 1] = (pred[:, : k + 1] + 1) % 4  # more wrong columns each frame: accuracy falls
            acc = float((pred == truth).mean())
            estimates.append(acc)
            est, level = acc - 0.05, 0 if acc >= 0.75 else (1 if acc >= 0.5 else 2)
            if k % 2:  # the quality before the truth, or after it
                pubs["a/quality"].publish(_quality_msg(stamp, est, level))
            wpub.publish(String(data=weather_json(stamp, fog, "clear" if k < 6 else "fog", frame=k)))
            pubs["camera/ground_truth/class_ids"].publish(_img(truth, stamp))
            pubs["a/class_ids"].publish(_img(pred, stamp))
            if not k % 2:
                pubs["a/quality"].publish(_quality_msg(stamp, est, level))
        H.wait_until(lambda: ev.scorer.frames_scored("a") == 12 and ev.scorer.counts.get("quality_a") == 12,
                     what="frames and their quality scored")
        assert ros.call(Trigger, f"{ns}/evaluator/write", Trigger.Request()).success
        v = json.loads((tmp_path / "q_summary.json").read_text())["quality"]["a"]
        assert v["frames"] == 12 and v["spearman_accuracy"] == pytest.approx(1.0)
        assert v["mae_points"] == pytest.approx(5.0, abs=0.01) and v["bias_points"] == pytest.approx(-5.0, abs=0.01)
        assert set(v["mae_points_by_phase"]) == {"clear", "fog"}
        assert sum(v["levels"].values()) == 12 and v["levels"]["ERROR"] > 0
        header = (tmp_path / "q_frames.csv").read_text().splitlines()[0].split(",")
        assert header[-2:] == ["a_quality", "a_quality_level"]
        assert "quality estimate against the truth" in ev.summary_text()
        for pub in [*pubs.values(), wpub]:
            h.client.destroy_publisher(pub)
    finally:
        next(added, None)
