"""Several cameras of one car in the weather loop and in bags: weather_camera publishes every view
with one stamp and its own ground truth (the pixels of ``SequenceRenderer(view=)``), the evaluator
scores each camera and all together, the loop runs them end to end, make-bag writes a topic per
view and replay adapts one model over them, scored per camera and resumable."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_ros_helpers as H  # noqa: E402
from test_ros_helpers import harness  # noqa: E402,F401  (fixture)

from tta_perception.metrics import CameraScorers, ConfusionMatrix  # noqa: E402
from tta_perception.runtime import image_codec as codec  # noqa: E402
from tta_perception.runtime.messages import stamp_to_ns, weather_json  # noqa: E402
from tta_perception.world.schedule import load_schedule  # noqa: E402
from tta_perception.world.sequences import SequenceRenderer  # noqa: E402

SIZE = (32, 64)
# the tiny test model, adapting every 2 frames on a window of 4
CFG = dict(model=H.arch("tiny_seg"), architecture=H.arch("tiny_seg"), allow_code_architecture=True, method="tent",
           device="cpu", input_size=[32, 64], window=4, adapt_every=2)


# ------------------------------------------------------------------------------------- pure scoring
def test_overall_score_sums_the_cameras_confusion_matrices():
    rng = np.random.default_rng(0)
    cams = CameraScorers(["front", "rear"], ["m"], num_classes=3)
    expected = {"front": ConfusionMatrix(3), "rear": ConfusionMatrix(3)}
    total = ConfusionMatrix(3)
    cams.add_weather(0, {"domain": "clear"})
    for k in range(4):
        for cam, s in cams.scorers.items():
            truth = rng.integers(0, 3, (4, 8)).astype(np.uint8)
            pred = truth if cam == "front" else rng.integers(0, 3, (4, 8)).astype(np.uint8)
            s.add_truth(k, truth)
            s.add_prediction("m", k, pred)
            expected[cam].update(pred, truth)
            total.update(pred, truth)
    cams.process(final=True)
    t = cams.tables()["m"]
    assert t["front"]["all"]["miou"] == pytest.approx(100.0)
    assert t["rear"]["all"]["miou"] == pytest.approx(100.0 * expected["rear"].miou())
    assert t["overall"]["all"] == {"miou": pytest.approx(100.0 * total.miou()),
                                   "acc": pytest.approx(100.0 * total.accuracy()), "frames": 8}
    assert t["overall"]["clear"]["frames"] == 8 and "front" in cams.text() and "overall" in cams.text()


# ------------------------------------------------------------------------------------------ over DDS
@pytest.fixture
def ros(harness):  # noqa: F811
    yield from H.added_nodes(harness)


def _params(**kw):
    from rclpy.parameter import Parameter

    return [Parameter(k, value=v) for k, v in kw.items()]


def _reliable():
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


def test_camera_publishes_every_view_with_one_stamp_and_its_own_ground_truth(ros):
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from tta_perception.ros.weather_camera import WeatherCamera

    ns = ros.namespace()
    views = ["front", "rear", "wide"]
    images = {v: H.Collector(ros.client, Image, f"{ns}/{v}/image_raw", _reliable()) for v in views}
    truths = {v: H.Collector(ros.client, Image, f"{ns}/{v}/ground_truth/class_ids", _reliable()) for v in views}
    weather = H.Collector(ros.client, String, f"{ns}/weather", _reliable())
    legacy = H.Collector(ros.client, Image, f"{ns}/camera/image_raw", _reliable())
    cam = ros.add(WeatherCamera(namespace=ns, context=ros.ctx, parameter_overrides=_params(
        schedule="day2night", rate=20.0, height=SIZE[0], width=SIZE[1], start_frame=1100, frame_stride=7,
        max_frames=3, cameras=views, wait_for_subscribers=1, wait_for_truth_subscribers=1)))
    H.wait_until(cam.done.is_set, what="3 frames published")
    ws = weather.wait(3)
    renderers = {v: SequenceRenderer("day2night", size=SIZE, view=v) for v in views}
    got = {v: (images[v].wait(3), truths[v].wait(3)) for v in views}
    for k in range(3):
        payload = json.loads(ws[k].data)
        stamp = stamp_to_ns(payload["stamp"]["sec"], payload["stamp"]["nanosec"])
        assert payload["frame"] == 1100 + 7 * k
        for v in views:
            img, gt = got[v][0][k], got[v][1][k]
            f = renderers[v].frame(1100 + 7 * k)
            assert stamp_to_ns(img.header.stamp.sec, img.header.stamp.nanosec) == stamp
            assert stamp_to_ns(gt.header.stamp.sec, gt.header.stamp.nanosec) == stamp
            assert img.header.frame_id == gt.header.frame_id == f"camera_{v}"
            assert np.array_equal(codec.raw_to_rgb(img.encoding, img.height, img.width, img.step, img.data), f.rgb)
            assert np.array_equal(np.frombuffer(bytes(gt.data), np.uint8).reshape(SIZE), f.labels)
    # the views differ (a camera looking back is not the front one), and nothing on the single topic
    assert not np.array_equal(bytes(got["front"][0][0].data), bytes(got["rear"][0][0].data))
    assert legacy.messages == []


def test_camera_refuses_unknown_views(ros):
    from tta_perception.ros.spin import ConfigError
    from tta_perception.ros.weather_camera import WeatherCamera

    for bad in (["front", "side"], ["rear", "rear"]):
        with pytest.raises(ConfigError, match="cameras"):
            WeatherCamera(namespace=ros.namespace(), context=ros.ctx, parameter_overrides=_params(cameras=bad))


def test_evaluator_scores_each_camera_and_all_together(ros, tmp_path):
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from tta_perception.ros.evaluator import Evaluator
    from tta_perception.ros.qos import output_qos

    ns = ros.namespace()
    ev = ros.add(Evaluator(namespace=ns, context=ros.ctx, parameter_overrides=_params(
        prediction_topics=[f"{ns}/m/class_ids"], cameras=["front", "rear"], num_classes=3,
        output_dir=str(tmp_path), prefix="t_", metrics_period=0.2)))
    names = ["front/ground_truth/class_ids", "rear/ground_truth/class_ids", "m/front/class_ids", "m/rear/class_ids"]
    pubs = {n: ros.client.create_publisher(Image, f"{ns}/{n}", output_qos(50)) for n in names}
    wpub = ros.client.create_publisher(String, f"{ns}/weather", output_qos(50))
    for pub in [*pubs.values(), wpub]:
        H.wait_until(lambda: pub.get_subscription_count() > 0, what="evaluator subscriptions")
    rng = np.random.default_rng(1)
    rear_cm, total = ConfusionMatrix(3), ConfusionMatrix(3)
    for k in range(4):
        stamp = (k + 1) * 10**8
        wpub.publish(String(data=weather_json(stamp, load_schedule("clear").weather_at(0), "clear", frame=k)))
        for cam in ("front", "rear"):
            truth = rng.integers(0, 3, (8, 16)).astype(np.uint8)
            pred = truth if cam == "front" else rng.integers(0, 3, (8, 16)).astype(np.uint8)
            pubs[f"{cam}/ground_truth/class_ids"].publish(_mono(truth, stamp))
            pubs[f"m/{cam}/class_ids"].publish(_mono(pred, stamp))
            total.update(pred, truth)
            if cam == "rear":
                rear_cm.update(pred, truth)
    H.wait_until(lambda: all(s.frames_scored("m") >= 4 for s in ev.multi.scorers.values()), what="frames scored")
    assert ros.call(Trigger, f"{ns}/evaluator/write", Trigger.Request()).success
    tables = ev.camera_tables()["m"]
    assert tables["front"]["all"]["miou"] == pytest.approx(100.0)
    assert tables["rear"]["all"]["miou"] == pytest.approx(100.0 * rear_cm.miou())
    assert tables["overall"]["all"]["miou"] == pytest.approx(100.0 * total.miou())
    assert ev.table()["m"]["all"]["frames"] == 8
    summary = json.loads((tmp_path / "t_summary.json").read_text())
    assert summary["cameras"] == ["front", "rear"]
    assert summary["overall"]["m"]["all"]["miou"] == pytest.approx(100.0 * total.miou())
    assert summary["per_camera"]["rear"]["m"]["all"]["frames"] == 4
    rows = list(csv.DictReader((tmp_path / "t_domains.csv").open()))
    assert {r["camera"] for r in rows} == {"front", "rear", "overall"}
    assert len(list(csv.DictReader((tmp_path / "t_front_frames.csv").open()))) == 4
    assert (tmp_path / "t_plot.png").stat().st_size > 1000
    text = ev.summary_text()
    assert "front" in text and "rear" in text and "overall" in text
    for pub in [*pubs.values(), wpub]:
        ros.client.destroy_publisher(pub)


def _mono(ids, stamp):
    from sensor_msgs.msg import Image

    msg = Image(height=ids.shape[0], width=ids.shape[1], step=ids.shape[1], encoding="mono8", data=ids.tobytes())
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp), 10**9)
    return msg


def test_weather_loop_with_two_cameras_scores_each(tmp_path):
    H.require_rclpy()
    from tta_perception.ros.weather_loop import run_weather_loop

    res = run_weather_loop("dynamic", duration=1.0, methods=("tent",), rate=10.0, frame_stride=60,
                           size=SIZE, device="cpu", model=H.arch("tiny_seg"), architecture=H.arch("tiny_seg"),
                           out=tmp_path, num_classes=3, drain_s=2.0, cameras=2,
                           node_params={"input_size": [32, 64], "window": 4, "adapt_every": 2},
                           log=lambda _: None, report_every=0)
    assert res.published == 10 and res.cameras == ["front", "rear"]
    per = res.camera_tables["tent"]
    assert per["front"]["all"]["frames"] >= 1 and per["rear"]["all"]["frames"] >= 1
    assert per["overall"]["all"]["frames"] == per["front"]["all"]["frames"] + per["rear"]["all"]["frames"]
    assert res.table["tent"]["all"] == per["overall"]["all"]
    assert "rear" in res.camera_text and (tmp_path / "loop_front_frames.csv").is_file()


# ---------------------------------------------------------------------------------------------- bags
@pytest.fixture(scope="module")
def two_camera_bag(tmp_path_factory):
    pytest.importorskip("rosbags")
    from tta_perception.bags.make import make_bag

    path = tmp_path_factory.mktemp("bags") / "two"
    info = make_bag("day2night", path, frames=8, start_frame=1000, size=SIZE, encoding="bgra8",
                    progress=False, views=["front", "rear"])
    assert info["image_topics"] == ["/front/image_raw", "/rear/image_raw"]
    return path


def test_make_bag_writes_a_topic_per_view_with_the_same_stamps(two_camera_bag):
    from tta_perception.bags import io as B

    with B.BagReader(two_camera_bag) as r:
        assert set(r.topics) == {"/front/image_raw", "/front/ground_truth/class_ids", "/rear/image_raw",
                                 "/rear/ground_truth/class_ids", "/weather"}
        msgs = {t: list(r.messages([t])) for t in r.topics}
    stamps = {t: [B.stamp_ns_of(m) for _, _, m in v] for t, v in msgs.items() if t != "/weather"}
    assert len({tuple(s) for s in stamps.values()}) == 1 and len(stamps["/front/image_raw"]) == 8
    for view in ("front", "rear"):
        sr = SequenceRenderer("day2night", size=SIZE, view=view)
        for k, ((_, _, img), (_, _, gt)) in enumerate(zip(msgs[f"/{view}/image_raw"],
                                                        msgs[f"/{view}/ground_truth/class_ids"])):
            f = sr.frame(1000 + k)
            assert img.header.frame_id == f"camera_{view}"
            assert np.array_equal(B.decode_image(img, B.TYPE_IMAGE, 10**7), f.rgb)
            assert np.array_equal(B.decode_labels(gt), f.labels)


def _replay(bag, out, pipe=None, **opts):
    from tta_perception.bags.replay import ReplayOptions, replay
    from tta_perception.runtime.params import node_config

    return replay(bag, out, node_config(CFG), ReplayOptions(progress=False, plot=False, **opts), pipeline=pipe)


def test_replay_adapts_one_model_over_both_cameras_and_scores_each(two_camera_bag, tmp_path):
    from tta_perception.bags import io as B

    res = _replay(two_camera_bag, tmp_path / "out")
    assert res.cameras == {"/front/image_raw": "front", "/rear/image_raw": "rear"}
    assert res.frames == 16
    with B.BagReader(tmp_path / "out") as r:
        for cam in ("front", "rear"):
            out = [B.stamp_ns_of(m) for _, _, m in r.messages([f"/tta/{cam}/class_ids"])]
            src = [B.stamp_ns_of(m) for _, _, m in B.BagReader(two_camera_bag).messages([f"/{cam}/image_raw"])]
            assert out == src and f"/tta/{cam}/confidence" in r.topics
            assert f"/{cam}/ground_truth/class_ids" in r.topics  # copied
    per = res.camera_tables["tent"]
    assert per["front"]["all"]["frames"] == per["rear"]["all"]["frames"] == 8
    assert per["overall"]["all"]["frames"] == 16 and res.table["tent"]["all"] == per["overall"]["all"]
    info = json.loads((tmp_path / "out" / "replay.json").read_text())
    assert info["cameras"] == res.cameras and "infer_batch" in info["grouping"]
    assert (tmp_path / "out" / "replay_rear_frames.csv").is_file()
    # --topics picks cameras; one topic is the single-camera replay, outputs as before
    one = _replay(two_camera_bag, tmp_path / "one", topics=["/rear/image_raw"])
    assert one.frames == 8 and not one.cameras
    with B.BagReader(tmp_path / "one") as r:
        assert "/tta/class_ids" in r.topics


def test_each_camera_gets_its_own_quality_with_fusion_domain_memory_and_the_guard(two_camera_bag, tmp_path):
    """Two cameras, one model, with temporal fusion, domain memory and the collapse guard on: each camera's
    quality message (one per frame, its own header and name) judges that camera's own published output
    (its uncalibrated estimate is the mean confidence of that camera's confidence map), replay.json has
    the quality per camera and validated per camera, and the fusion, the domains and the guard ran."""
    import torch

    from tta_perception.bags import io as B
    from tta_perception.bags.replay import ReplayOptions, replay
    from tta_perception.engine.domains import calibrate, source_features
    from tta_perception.runtime.params import node_config

    dark = [np.clip(70 + 20 * np.random.default_rng(i).random((32, 64, 3)), 0, 255).astype(np.uint8)
            for i in range(40)]
    src = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in dark])
    cal = tmp_path / "domains.json"
    cal.write_text(json.dumps(calibrate(source_features(H.tiny_seg(), src))))
    cfg = node_config(dict(CFG, temporal_fusion=0.5, domain_memory=True, domain_calibration=str(cal),
                           domain_patience=2, guard=True, guard_check_every=1))
    res = replay(two_camera_bag, tmp_path / "out", cfg, ReplayOptions(progress=False, plot=False))
    assert res.frames == 16
    info = json.loads((tmp_path / "out" / "replay.json").read_text())
    assert info["adapter"]["domains_known"] >= 1 and info["adapter"]["adapt_steps"] > 0
    assert info["guard"]["guard_checks"] == 16 and info["guard"]["guard_nonfinite"] == 0
    with B.BagReader(tmp_path / "out") as r:
        for cam in ("front", "rear"):
            quality = list(r.messages([f"/tta/{cam}/quality"]))
            confidence = {B.stamp_ns_of(m): B.decode_labels(m) for _, _, m in r.messages([f"/tta/{cam}/confidence"])}
            src_stamps = [B.stamp_ns_of(m) for _, _, m in B.BagReader(two_camera_bag).messages([f"/{cam}/image_raw"])]
            assert [B.stamp_ns_of(m) for _, _, m in quality] == src_stamps
            for _, _, m in quality:
                assert m.header.frame_id == m.status[0].hardware_id == f"camera_{cam}"
                assert m.status[0].name == f"/tta_node: {cam} quality"
                # judged on this camera's own (fused) output: its mean max-softmax on every 2nd pixel
                own = confidence[B.stamp_ns_of(m)][::2, ::2].mean() / 255.0
                assert float(B.diagnostic_values(m)["conf"]) == pytest.approx(own, abs=2e-3)
            q = info["quality"]["per_camera"][cam]
            assert q["frames"] == 8 and sum(q["levels"].values()) == 8
            assert info["quality"]["validation"][cam]["frames"] == 8
    assert info["quality"]["frames"] == 16 and info["quality"]["validation"]["overall"]["frames"] == 16
    summary = json.loads((tmp_path / "out" / "replay_summary.json").read_text())
    assert summary["quality"]["tent"] == info["quality"]["validation"]
    # the two cameras' estimates differ: neither is the other's, nor a mean over both
    front, rear = (info["quality"]["per_camera"][c]["mean_estimate"] for c in ("front", "rear"))
    assert front != rear and info["quality"]["mean_estimate"] == pytest.approx((front + rear) / 2)


def test_two_camera_replay_batches_identical_stamps_and_resumes_to_the_same_output(two_camera_bag, tmp_path):
    from tta_perception.bags import io as B
    from tta_perception.bags.replay import ReplayInterrupted, resume_dir_of
    from tta_perception.runtime.params import node_config
    from tta_perception.runtime.pipeline import make_pipeline

    full = _replay(two_camera_bag, tmp_path / "full")
    pipe = make_pipeline(node_config(CFG))
    calls, real = {"n": 0, "sizes": []}, pipe.infer_batch

    def interrupted(rgbs, *args, **kwargs):
        calls["n"] += 1
        calls["sizes"].append(len(rgbs))
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(rgbs, *args, **kwargs)

    pipe.infer_batch = interrupted
    out = tmp_path / "out"
    try:
        with pytest.raises(ReplayInterrupted, match="--resume"):
            _replay(two_camera_bag, out, pipe, checkpoint_every=4)
    finally:
        pipe.close()
    assert calls["sizes"] == [2] * 6  # front and rear of one stamp in one pass
    assert (resume_dir_of(out) / "checkpoint.pt").is_file() and not out.exists()
    res = _replay(two_camera_bag, out, checkpoint_every=4, resume=True)
    assert res.frames == 16 and res.stamps == full.stamps and not resume_dir_of(out).exists()
    for topic in ("/tta/front/class_ids", "/tta/rear/class_ids", "/rear/ground_truth/class_ids", "/weather"):
        with B.BagReader(tmp_path / "full") as ra, B.BagReader(out) as rb:
            a, b = list(ra.messages([topic])), list(rb.messages([topic]))
        assert [log for _, log, _ in a] == [log for _, log, _ in b], topic
        if topic.startswith("/tta"):
            assert all(np.array_equal(B.decode_labels(x), B.decode_labels(y)) for (_, _, x), (_, _, y) in zip(a, b))
    assert res.camera_tables["tent"]["rear"]["all"] == pytest.approx(full.camera_tables["tent"]["rear"]["all"])


def test_cli_make_bag_cameras_and_replay(tmp_path, capsys):
    pytest.importorskip("rosbags")
    from tta_perception.cli.main import main as cli

    bag = tmp_path / "bag"
    assert cli(["make-bag", "--out", str(bag), "--frames", "3", "--size", "32x64", "--views", "front,wide",
                "--no-progress"]) == 0
    assert "/wide/image_raw: 3 messages" in capsys.readouterr().out
    out = tmp_path / "out"
    assert cli(["replay", str(bag), "--out", str(out), "--topics", "/front/image_raw,/wide/image_raw",
                "--model", H.arch("tiny_seg"), "--architecture", H.arch("tiny_seg"), "--method", "norm",
                "--device", "cpu", "--no-progress", "--no-plot", "--checkpoint-every", "0"]) == 0
    text = capsys.readouterr().out
    assert "per camera and overall" in text and "wide" in text
