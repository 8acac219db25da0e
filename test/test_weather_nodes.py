"""weather_camera, evaluator and carla_weather over real DDS with the real rclpy: what the camera
publishes (encodings, stamps, ground truth, weather), simulated time, stamp matching and per-phase
scores on known inputs, files at shutdown in another process, and carla_weather's clear error and
back-off without the carla package or without a server (a stand-in module stands for the latter)."""
from __future__ import annotations

import csv
import importlib.util
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_ros_helpers as H  # noqa: E402
from test_ros_helpers import harness  # noqa: E402,F401  (fixture)

H.require_rclpy()

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from tta_perception.metrics import ConfusionMatrix  # noqa: E402
from tta_perception.runtime import image_codec as codec  # noqa: E402
from tta_perception.ros.carla_weather import CarlaWeather, backoff_delays  # noqa: E402
from tta_perception.ros.evaluator import Evaluator, label_of  # noqa: E402
from tta_perception.ros.qos import output_qos  # noqa: E402
from tta_perception.ros.weather_camera import WeatherCamera  # noqa: E402
from tta_perception.runtime.messages import stamp_to_ns, weather_json  # noqa: E402
from tta_perception.world.schedule import load_schedule  # noqa: E402
from tta_perception.world.sequences import SequenceRenderer  # noqa: E402

RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture
def ros(harness):
    """The harness; nodes added with ``add`` are stopped and destroyed after the test."""
    yield from H.added_nodes(harness)


def _params(**kw):
    return [Parameter(k, value=v) for k, v in kw.items()]


def _ns(h):
    return h.namespace()


# ------------------------------------------------------------------------------------ weather_camera
@pytest.mark.parametrize("encoding", ["rgb8", "bgra8", "mono8"])
def test_camera_publishes_frames_truth_and_weather_with_one_stamp(ros, encoding):
    ns = _ns(ros)
    images = H.Collector(ros.client, Image, f"{ns}/camera/image_raw", RELIABLE)
    truth = H.Collector(ros.client, Image, f"{ns}/camera/ground_truth/class_ids", RELIABLE)
    weather = H.Collector(ros.client, String, f"{ns}/weather", RELIABLE)
    cam = ros.add(WeatherCamera(namespace=ns, context=ros.ctx, parameter_overrides=_params(
        schedule="clear2fog", rate=20.0, height=32, width=64, encoding=encoding, start_frame=1000,
        frame_stride=5, max_frames=4, frame_id="front_cam", wait_for_subscribers=1,
        wait_for_truth_subscribers=1)))
    H.wait_until(cam.done.is_set, what="4 frames published")
    imgs, gts, ws = images.wait(4), truth.wait(4), weather.wait(4)
    sr = SequenceRenderer("clear2fog", size=(32, 64))
    schedule = load_schedule("clear2fog")
    stamps = []
    for k, (img, gt, w) in enumerate(zip(imgs, gts, ws)):
        f = sr.frame(1000 + 5 * k)
        stamp = stamp_to_ns(img.header.stamp.sec, img.header.stamp.nanosec)
        stamps.append(stamp)
        assert stamp_to_ns(gt.header.stamp.sec, gt.header.stamp.nanosec) == stamp
        assert img.header.frame_id == gt.header.frame_id == "front_cam"
        assert (img.encoding, img.height, img.width) == (encoding, 32, 64)
        assert img.step == 64 * codec.ENCODINGS[encoding][0]
        rgb = codec.raw_to_rgb(img.encoding, img.height, img.width, img.step, img.data)
        if encoding == "mono8":
            from tta_perception.runtime.image_codec import to_grey
            assert np.array_equal(rgb[..., 0], to_grey(f.rgb))
        else:
            assert np.array_equal(rgb, f.rgb)
        assert gt.encoding == "mono8"
        assert np.array_equal(np.frombuffer(bytes(gt.data), np.uint8).reshape(32, 64), f.labels)
        payload = json.loads(w.data)
        assert stamp_to_ns(payload["stamp"]["sec"], payload["stamp"]["nanosec"]) == stamp
        assert payload["frame"] == 1000 + 5 * k and payload["domain"] == schedule.domain_at(f.time)
        assert payload["weather"]["fog_density"] == pytest.approx(f.weather.fog_density, abs=1e-5)
        assert payload["schedule"] == "clear2fog" and payload["source"] == "embedded"
    assert stamps == sorted(stamps) and len(set(stamps)) == 4


def test_camera_follows_sim_time(ros):
    """With use_sim_time the timer and the stamps follow /clock; nothing goes out before it starts."""
    ns = _ns(ros)
    clock_pub = ros.client.create_publisher(Clock, "/clock", 10)
    images = H.Collector(ros.client, Image, f"{ns}/camera/image_raw", RELIABLE)
    cam = ros.add(WeatherCamera(namespace=ns, context=ros.ctx, parameter_overrides=_params(
        use_sim_time=True, schedule="clear", rate=10.0, height=16, width=32, max_frames=3)))
    H.wait_until(lambda: cam.image_pub.get_subscription_count() > 0, what="image subscriber")
    time.sleep(0.5)
    assert cam.published == 0  # no /clock yet: no frame stamped 0
    sim = 500 * 10**9
    try:
        for _ in range(400):
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = sim // 10**9, sim % 10**9
            clock_pub.publish(msg)
            if len(images.messages) >= 3:
                break
            sim += 50_000_000  # 50 ms of simulated time per 10 ms of wall time
            time.sleep(0.01)
        got = images.wait(3)
    finally:
        ros.client.destroy_publisher(clock_pub)
    stamps = [stamp_to_ns(m.header.stamp.sec, m.header.stamp.nanosec) for m in got]
    assert all(500 * 10**9 <= s <= sim for s in stamps)
    gaps = np.diff(stamps) / 1e9
    assert np.all(gaps >= 0.1 - 0.051), gaps  # one frame per 0.1 s of simulated time


def test_camera_refuses_bad_parameters(ros):
    from tta_perception.ros.weather_camera import ConfigError

    with pytest.raises(ConfigError, match="parameter 'encoding' must be one of"):
        WeatherCamera(namespace=_ns(ros), context=ros.ctx, parameter_overrides=_params(encoding="yuv422"))
    with pytest.raises(ConfigError, match="parameter 'schedule': unknown sequence 'nope'"):
        WeatherCamera(namespace=_ns(ros), context=ros.ctx, parameter_overrides=_params(schedule="nope"))


# ---------------------------------------------------------------------------------------- evaluator
def _img(array, stamp_ns, encoding="mono8"):
    h, w, step, data = codec.mono8(array)
    return H.raw_msg(encoding, h, w, step, data, stamp=(stamp_ns // 10**9, stamp_ns % 10**9))


def _known_inputs():
    """8 frames: 4 clear, 4 fog. Method 'a' is perfect; 'b' is perfect in clear, wrong in fog and
    misses frame 6 (a node that dropped it)."""
    rng = np.random.default_rng(0)
    base = 100 * 10**9
    frames = []
    for k in range(8):
        truth = rng.integers(0, 4, (8, 16)).astype(np.uint8)
        truth[0, :3] = 255  # unlabeled pixels are ignored
        wrong = (truth + 1) % 4
        wrong[truth == 255] = 0
        frames.append((base + k * 10**8, "clear" if k < 4 else "fog", truth, wrong))
    return frames


def test_evaluator_matches_by_stamp_and_scores_per_phase(ros, tmp_path):
    ns = _ns(ros)
    ev = ros.add(Evaluator(namespace=ns, context=ros.ctx, parameter_overrides=_params(
        prediction_topics=[f"{ns}/a/class_ids", f"{ns}/b/class_ids"], num_classes=4,
        output_dir=str(tmp_path), prefix="t_", metrics_period=0.2, flicker=False)))  # flicker: its own test
    assert ev.labels == ["a", "b"]
    pubs = {name: ros.client.create_publisher(Image, f"{ns}/{name}", output_qos(50))
            for name in ("camera/ground_truth/class_ids", "a/class_ids", "b/class_ids")}
    wpub = ros.client.create_publisher(String, f"{ns}/weather", output_qos(50))
    metrics = H.Collector(ros.client, String, f"{ns}/evaluator/metrics", RELIABLE)
    for pub in [*pubs.values(), wpub]:
        H.wait_until(lambda: pub.get_subscription_count() > 0, what="evaluator subscriptions")
    frames = _known_inputs()
    weather = load_schedule("clear2fog")
    for k, (stamp, domain, truth, wrong) in enumerate(frames):
        w = weather_json(stamp, weather.weather_at(0 if domain == "clear" else 120), domain, frame=k)
        pred_b = truth.copy() if domain == "clear" else wrong
        pred_b[truth == 255] = 0
        if k % 2:  # out of order: predictions before the truth and the weather
            pubs["a/class_ids"].publish(_img(np.where(truth == 255, 0, truth), stamp))
            if k != 6:
                pubs["b/class_ids"].publish(_img(pred_b, stamp))
            pubs["camera/ground_truth/class_ids"].publish(_img(truth, stamp))
            wpub.publish(String(data=w))
        else:
            wpub.publish(String(data=w))
            pubs["camera/ground_truth/class_ids"].publish(_img(truth, stamp))
            pubs["a/class_ids"].publish(_img(np.where(truth == 255, 0, truth), stamp))
            if k != 6:
                pubs["b/class_ids"].publish(_img(pred_b, stamp))
    # a prediction nobody has truth for, and one at another size (resized to the truth's)
    pubs["a/class_ids"].publish(_img(np.zeros((8, 16), np.uint8), 999 * 10**9))
    H.wait_until(lambda: ev.scorer.frames_scored("a") >= 7 and ev.scorer.frames_scored("b") >= 6,
                 what="frames scored")
    reply = ros.call(Trigger, f"{ns}/evaluator/write", Trigger.Request())
    assert reply.success
    table = ev.table()
    assert table["a"]["clear"]["miou"] == pytest.approx(100.0)
    # the last frame of 'a' waits for a later weather message only if its stamp is the newest
    assert table["a"]["fog"]["miou"] == pytest.approx(100.0)
    assert table["b"]["clear"] == {"miou": pytest.approx(100.0), "acc": pytest.approx(100.0), "frames": 4}
    expected = ConfusionMatrix(4)
    for stamp, domain, truth, wrong in frames[4:]:
        if stamp != frames[6][0]:
            expected.update(wrong, truth)
    assert table["b"]["fog"]["frames"] == 3
    assert table["b"]["fog"]["miou"] == pytest.approx(100.0 * expected.miou())
    assert table["b"]["fog"]["acc"] == pytest.approx(0.0)
    rows = list(csv.DictReader((tmp_path / "t_frames.csv").open()))
    assert len(rows) == 8 and [r["domain"] for r in rows] == ["clear"] * 4 + ["fog"] * 4
    assert rows[6]["b_miou"] == "" and float(rows[6]["a_miou"]) == pytest.approx(100.0)
    assert [int(r["frame"]) for r in rows] == list(range(8))
    summary = json.loads((tmp_path / "t_summary.json").read_text())
    assert summary["counts"]["truth"] == 8 and summary["domains"] == ["clear", "fog"]
    assert (tmp_path / "t_plot.png").stat().st_size > 1000
    assert (tmp_path / "t_domains.csv").read_text().splitlines()[0] == "method,domain,frames,miou,acc"
    status = json.loads(metrics.wait(1, predicate=lambda m: '"scored_b": 7' in m.data)[-1].data)
    assert status["current_domain"] == "fog"
    for pub in [*pubs.values(), wpub]:
        ros.client.destroy_publisher(pub)


def test_evaluator_scores_label_flicker_along_the_camera_motion(ros, tmp_path):
    """A textured scene sliding 2 px a frame: 'a' predicts the truth (steady: 0 % flicker), 'b'
    alternates between the truth and a wrong class everywhere (100 % of the counted pixels change),
    'c' is steady but skips frame 3 (frames 3 and 4 have no predecessor of 'c': not counted)."""
    import cv2

    ns = _ns(ros)
    ev = ros.add(Evaluator(namespace=ns, context=ros.ctx, parameter_overrides=_params(
        prediction_topics=[f"{ns}/{m}/class_ids" for m in "abc"], num_classes=4,
        output_dir=str(tmp_path), prefix="f_", metrics_period=0.2)))
    names = ("camera/image_raw", "camera/ground_truth/class_ids", *(f"{m}/class_ids" for m in "abc"))
    pubs = {name: ros.client.create_publisher(Image, f"{ns}/{name}", output_qos(50)) for name in names}
    wpub = ros.client.create_publisher(String, f"{ns}/weather", output_qos(50))
    for pub in [*pubs.values(), wpub]:
        H.wait_until(lambda: pub.get_subscription_count() > 0, what="evaluator subscriptions")
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (64, 192, 3)).astype(np.uint8), (0, 0), 2.0)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX)
    classes = np.repeat(np.arange(12) % 4, 16)[None].repeat(64, 0).astype(np.uint8)  # 16-px stripes
    base, n = 300 * 10**9, 10
    frames = [(base + k * 10**8, np.ascontiguousarray(texture[:, 2 * k:2 * k + 128]),
               np.ascontiguousarray(classes[:, 2 * k:2 * k + 128])) for k in range(n)]
    for stamp, rgb, _ in frames:  # the images first: the flow is there when the frames are scored
        h, w, step, data = codec.rgb8(rgb)
        pubs["camera/image_raw"].publish(H.raw_msg("rgb8", h, w, step, data, stamp=(stamp // 10**9, stamp % 10**9)))
    H.wait_until(lambda: ev.motion[""].chain.links == n - 1, what="the flow of every frame")
    weather = load_schedule("clear2fog").weather_at(0)
    for k, (stamp, _, truth) in enumerate(frames):
        pubs["camera/ground_truth/class_ids"].publish(_img(truth, stamp))
        pubs["a/class_ids"].publish(_img(truth, stamp))
        pubs["b/class_ids"].publish(_img(truth if k % 2 == 0 else (truth + 1) % 4, stamp))
        if k != 3:
            pubs["c/class_ids"].publish(_img(truth, stamp))
        wpub.publish(String(data=weather_json(stamp, weather, "clear", frame=k)))
    wpub.publish(String(data=weather_json(base + n * 10**8, weather, "clear", frame=n)))  # resolves the last
    H.wait_until(lambda: all(ev.scorer.frames_scored(m) >= (n - 1 if m == "c" else n) for m in "abc"),
                 what="frames scored")
    table = ev.table()
    counts = ev.scorer.counts
    assert counts["flicker_a"] == counts["flicker_b"] == n - 1 and counts["flicker_c"] == n - 3
    assert table["a"]["clear"]["flicker"] == pytest.approx(0.0)
    assert table["b"]["clear"]["flicker"] == pytest.approx(100.0)
    assert table["c"]["all"]["flicker"] == pytest.approx(0.0)
    assert sum(ev.scorer.flicker["a"].counted.values()) > 0.5 * (n - 1) * 64 * 128  # most pixels counted
    assert "label flicker" in ev.summary_text()
    written = ev.write()
    rows = list(csv.DictReader(written["domains"].open()))
    assert {(r["method"], r["domain"]): float(r["flicker"]) for r in rows}[("b", "all")] == pytest.approx(100.0)
    for pub in [*pubs.values(), wpub]:
        ros.client.destroy_publisher(pub)


def test_evaluator_scores_against_carla_palette_ground_truth(ros, tmp_path):
    from tta_perception.world.carla_labels import CARLA_TAGS
    from tta_perception.world.classes import CLASS_ID

    ns = _ns(ros)
    ev = ros.add(Evaluator(namespace=ns, context=ros.ctx, parameter_overrides=_params(
        prediction_topics=[f"{ns}/m/class_ids"], truth_encoding="carla_palette", output_dir=str(tmp_path),
        write_period=0.0, plot=False)))
    truth_pub = ros.client.create_publisher(Image, f"{ns}/camera/ground_truth/class_ids", output_qos(50))
    pred_pub = ros.client.create_publisher(Image, f"{ns}/m/class_ids", output_qos(50))
    wpub = ros.client.create_publisher(String, f"{ns}/weather", output_qos(50))
    for pub in (truth_pub, pred_pub, wpub):
        H.wait_until(lambda: pub.get_subscription_count() > 0, what="evaluator subscriptions")
    # left half CARLA 'road', right half 'truck' (-> vehicle), bottom row 'wall' (no counterpart)
    rgb = np.zeros((8, 16, 3), np.uint8)
    rgb[:, :8] = CARLA_TAGS["road"][0]
    rgb[:, 8:] = CARLA_TAGS["truck"][0]
    rgb[-1] = CARLA_TAGS["wall"][0]
    h, w, step, data = codec.rgb_to_raw(rgb, "bgra8")  # as the bridge's semantic camera sends it
    stamp = 5 * 10**9
    sec, nsec = divmod(stamp, 10**9)
    truth = Image(height=h, width=w, step=step, encoding="bgra8", data=data)
    truth.header.stamp.sec, truth.header.stamp.nanosec = sec, nsec
    pred = np.zeros((8, 16), np.uint8)
    pred[:, :8] = CLASS_ID["road"]
    pred[:, 8:] = CLASS_ID["sidewalk"]  # wrong on the truck
    pred[-1] = CLASS_ID["sky"]  # not scored: wall is unlabeled
    weather = load_schedule("clear").weather_at(0)
    wpub.publish(String(data=weather_json(stamp, weather, "clear", frame=0)))
    truth_pub.publish(truth)
    pred_pub.publish(_img(pred, stamp))
    H.wait_until(lambda: ev.scorer.frames_scored("m") >= 1, what="the frame scored")
    row = ev.table()["m"]["clear"]
    assert row["acc"] == pytest.approx(50.0)  # road right, truck wrong, the wall row not scored
    assert row["miou"] == pytest.approx(100.0 / 3)  # IoU road 1, vehicle 0, sidewalk 0
    bad = Image(height=2, width=2, step=3, encoding="bgra8", data=bytes(6))
    bad.header.stamp.sec = 9
    before = ev.bad_messages
    truth_pub.publish(bad)
    H.wait_until(lambda: ev.bad_messages > before, what="the malformed truth counted")
    for pub in (truth_pub, pred_pub, wpub):
        ros.client.destroy_publisher(pub)


def test_evaluator_labels_and_bad_parameters(ros):
    from tta_perception.ros.evaluator import ConfigError

    assert label_of("/dplot/class_ids") == "dplot" and label_of("class_ids") == "class_ids"
    with pytest.raises(ConfigError, match="labels must be unique"):
        Evaluator(namespace=_ns(ros), context=ros.ctx, parameter_overrides=_params(
            prediction_topics=["/x/class_ids", "/y/x/class_ids"]))
    with pytest.raises(ConfigError, match="'labels' has 1 names for 2"):
        Evaluator(namespace=_ns(ros), context=ros.ctx, parameter_overrides=_params(
            prediction_topics=["/p/class_ids", "/q/class_ids"], labels=["p"]))


def test_evaluator_process_writes_its_files_at_shutdown(ros, tmp_path):
    """The installed-style launcher, in its own process, over DDS; Ctrl-C -> CSV/JSON/PNG written."""
    ns = _ns(ros)
    launcher = H.REPO / "tta_perception" / "ros" / "bin" / "evaluator"
    env = H.subprocess_env(TTA_PERCEPTION_PYTHON=sys.executable)
    proc = subprocess.Popen([str(launcher), "--ros-args", "-r", f"__ns:={ns}", "-p",
                             f"output_dir:={tmp_path}", "-p", "num_classes:=4"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        truth_pub = ros.client.create_publisher(Image, f"{ns}/camera/ground_truth/class_ids", output_qos(50))
        pred_pub = ros.client.create_publisher(Image, f"{ns}/class_ids", output_qos(50))
        wpub = ros.client.create_publisher(String, f"{ns}/weather", output_qos(50))
        for pub in (truth_pub, pred_pub, wpub):
            H.wait_until(lambda: pub.get_subscription_count() > 0, timeout=60, what="evaluator process")
        w = load_schedule("clear").weather_at(0)
        for stamp, _, truth, _ in _known_inputs()[:4]:
            wpub.publish(String(data=weather_json(stamp, w, "clear")))
            truth_pub.publish(_img(truth, stamp))
            pred_pub.publish(_img(np.where(truth == 255, 0, truth), stamp))
        metrics = H.Collector(ros.client, String, f"{ns}/evaluator/metrics", RELIABLE)
        metrics.wait(1, timeout=60, predicate=lambda m: '"scored_class_ids": 4' in m.data)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["table"]["class_ids"]["clear"]["miou"] == pytest.approx(100.0)
    assert (tmp_path / "frames.csv").is_file() and (tmp_path / "plot.png").is_file()
    assert "clear" in out and "wrote" in out


# ------------------------------------------------------------------------------------ carla_weather
def test_backoff_doubles_up_to_the_cap():
    gen = backoff_delays(0.5, 4.0)
    assert [next(gen) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


@pytest.mark.skipif(importlib.util.find_spec("carla") is not None, reason="the carla package is installed")
def test_carla_weather_without_the_carla_package_says_what_to_install_and_backs_off(ros):
    ns = _ns(ros)
    diags = H.Collector(ros.client, DiagnosticArray, "/diagnostics", RELIABLE)
    node = ros.add(CarlaWeather(namespace=ns, context=ros.ctx, parameter_overrides=_params(
        retry_initial=0.2, retry_max=0.4, diagnostics_period=0.2)))
    H.wait_until(lambda: node.attempts >= 3, what="three connection attempts")
    d = node.diagnostics()
    assert not d["connected"] and "pip install carla" in d["last_error"]
    msg = diags.wait(1, predicate=lambda m: any(s.name.endswith(f"{ns}/carla_weather")
                                                 and s.level == DiagnosticStatus.ERROR
                                                 for s in m.status))[-1]
    status = next(s for s in msg.status if s.name.endswith(f"{ns}/carla_weather"))
    assert "pip install carla" in status.message
    t0, n0 = time.monotonic(), node.attempts
    time.sleep(1.2)
    # back-off, no crash loop: at 0.4 s between attempts at most ~3 more (a tight loop would be thousands)
    assert node.attempts - n0 <= int((time.monotonic() - t0) / 0.4) + 2


def test_carla_weather_process_without_carla_keeps_running_and_logs_sparingly(ros):
    """The node as users start it: no traceback, one clear line per attempt, back-off, clean Ctrl-C."""
    if importlib.util.find_spec("carla") is not None:
        pytest.skip("the carla package is installed")
    launcher = H.REPO / "tta_perception" / "ros" / "bin" / "carla_weather"
    env = H.subprocess_env(TTA_PERCEPTION_PYTHON=sys.executable)
    proc = subprocess.Popen([str(launcher), "--ros-args", "-r", f"__ns:={_ns(ros)}", "-p", "retry_initial:=0.5",
                             "-p", "retry_max:=1.0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        H.wait_until(lambda: any("pip install carla" in line for line in lines), timeout=60,
                     what="the first connection error")
        time.sleep(3.0)  # attempts at +0.5, +1.5, +2.5 s (0.5 s doubling to 1 s)
        assert proc.poll() is None, "the node exited instead of retrying"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines)
    errors = [line for line in lines if "pip install carla" in line]
    assert 2 <= len(errors) <= 8, out  # one line per attempt with back-off, not a flood
    assert "Traceback" not in out and proc.returncode == 0, out


class FakeCarla:
    """The surface of the carla module the node uses: Client(host, port), set_timeout, get_world,
    world.get_snapshot().timestamp.elapsed_seconds, set_weather, WeatherParameters."""

    class WeatherParameters:
        def __init__(self):  # like carla 0.9.13: no dust_storm field
            for k in ("cloudiness", "precipitation", "precipitation_deposits", "wind_intensity",
                      "sun_azimuth_angle", "sun_altitude_angle", "fog_density", "fog_distance", "fog_falloff",
                      "wetness", "scattering_intensity", "mie_scattering_scale", "rayleigh_scattering_scale"):
                setattr(self, k, 0.0)

    def __init__(self):
        self.server_up = threading.Event()
        self.sim_time = 0.0
        self.sim_step = 0.0
        self.applied = []  # (sim time, weather)
        self.fail_set_weather = False
        self.connects = 0
        fake = self

        class Snapshot:
            def __init__(self, t):
                self.timestamp = type("Timestamp", (), {"elapsed_seconds": t})()

        class World:
            def get_snapshot(self):
                fake.sim_time += fake.sim_step
                return Snapshot(fake.sim_time)

            def get_settings(self):
                return type("Settings", (), {"synchronous_mode": True})()

            def set_weather(self, weather):
                if fake.fail_set_weather:
                    raise RuntimeError("time-out of 1000ms while waiting for the simulator")
                fake.applied.append((fake.sim_time, weather))

        class Client:
            def __init__(self, host, port):
                self.address = (host, port)

            def set_timeout(self, seconds):
                self.timeout = seconds

            def get_world(self):
                if not fake.server_up.is_set():
                    raise RuntimeError(f"time-out of {int(self.timeout * 1000)}ms while waiting for the "
                                       f"simulator, make sure the simulator is ready and connected to "
                                       f"{self.address[0]}:{self.address[1]}")
                fake.connects += 1
                return World()

            def get_client_version(self):
                return "0.9.13"

            def get_server_version(self):
                return "0.9.13"

        self.Client = Client


def test_carla_weather_backs_off_until_the_server_is_up_then_applies_the_schedule_throttled(ros):
    ns = _ns(ros)
    fake = FakeCarla()
    weather = H.Collector(ros.client, String, f"{ns}/weather", RELIABLE)
    node = ros.add(CarlaWeather(namespace=ns, context=ros.ctx, carla_loader=lambda: fake, parameter_overrides=_params(
        schedule="clear2fog", port=2345, timeout=0.5, retry_initial=0.1, retry_max=0.2, update_rate=10.0,
        time_scale=10.0)))
    H.wait_until(lambda: node.attempts >= 2, what="retries")
    assert "no CARLA server at localhost:2345" in node.last_error and "start the simulator" in node.last_error
    assert not fake.applied
    # the server comes up: simulated time advances 0.02 s per snapshot (slower than the 10-Hz timer)
    fake.sim_step = 0.02
    fake.server_up.set()
    H.wait_until(node.connected.is_set, what="connection")
    H.wait_until(lambda: len(fake.applied) >= 3, what="set_weather calls")
    sim_elapsed = fake.sim_time - fake.applied[0][0]
    # at most 10 calls per simulated second, whatever the wall-clock rate of the timer
    assert len(fake.applied) <= sim_elapsed * 10 + 1.5
    gaps = np.diff([t for t, _ in fake.applied])
    assert np.all(gaps >= 0.1 - 1e-6), gaps
    # the weather sent is the schedule's at the simulated time (time_scale 10: 0.1 s -> 1 s of schedule)
    t_sched = node.schedule_time
    last = fake.applied[-1][1]
    expected = load_schedule("clear2fog").weather_at(t_sched)
    assert last.fog_density == pytest.approx(expected.fog_density, abs=1e-3)
    assert node.missing_fields == ["dust_storm"]  # an older CARLA without the field: skipped, not fatal
    payload = json.loads(weather.wait(1, predicate=lambda m: '"applied": true' in m.data)[-1].data)
    assert payload["source"] == "carla" and payload["schedule"] == "clear2fog"
    # the connection drops: reconnect instead of dying
    connects = fake.connects
    fake.fail_set_weather = True
    H.wait_until(lambda: not node.connected.is_set(), what="loss detected")
    fake.fail_set_weather = False
    H.wait_until(lambda: fake.connects > connects and node.connected.is_set(), what="reconnected")


def test_carla_weather_holds_still_when_simulation_time_stops(ros):
    """Synchronous mode, paused simulation: simulated time does not move, so no more set_weather."""
    fake = FakeCarla()
    fake.server_up.set()
    fake.sim_step = 0.0
    ros.add(CarlaWeather(namespace=_ns(ros), context=ros.ctx, carla_loader=lambda: fake,
                         parameter_overrides=_params(schedule="dynamic", update_rate=10.0)))
    H.wait_until(lambda: len(fake.applied) >= 1, what="first set_weather")
    time.sleep(0.6)  # ~6 timer ticks of wall time, zero simulated time
    assert len(fake.applied) == 1
    fake.sim_step = 0.5  # the simulation runs again (fast): about one call per tick
    H.wait_until(lambda: len(fake.applied) >= 3, what="updates resume")


def test_carla_weather_refuses_bad_parameters(ros):
    from tta_perception.ros.carla_weather import ConfigError

    with pytest.raises(ConfigError, match="parameter 'time_source' must be carla or ros"):
        CarlaWeather(namespace=_ns(ros), context=ros.ctx, carla_loader=FakeCarla,
                     parameter_overrides=_params(time_source="wall"))


# --------------------------------------------------------------------------------------- the loop
def test_weather_loop_runs_camera_nodes_and_evaluator_end_to_end(tmp_path):
    from tta_perception.ros.weather_loop import available, run_weather_loop

    assert available() == (True, "")
    res = run_weather_loop("dynamic", duration=2.0, methods=("source", "tent"), rate=10.0, frame_stride=60,
                           size=(32, 64), device="cpu", model=H.arch("tiny_seg"),
                           architecture=H.arch("tiny_seg"), out=tmp_path, num_classes=3, drain_s=2.0,
                           node_params={"input_size": [32, 64], "window": 4, "adapt_every": 2},
                           log=lambda _: None, report_every=0)
    assert res.published == 20
    assert set(res.table) == {"source", "tent"}
    for m in ("source", "tent"):
        assert res.processed[m] >= 1 and res.table[m]["all"]["frames"] >= 1
    # 20 frames x 60 schedule frames = 120 s of the dynamic cycle: several phases seen
    assert len([d for d in res.table["source"] if d != "all"]) >= 3
    assert res.files["frames"].is_file() and res.files["plot"].is_file()
    assert "source" in res.text and "tent" in res.text
