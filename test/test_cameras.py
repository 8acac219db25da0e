"""Several cameras, one adapted model: the batched prediction equals one prediction per camera, the
chosen cameras feed the adaptation window, and over real DDS the node serves each camera under its
own namespace and keeps serving the others when one stops, floods, sends garbage, huge frames or
another encoding; the counters name the camera."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_fixtures import images  # noqa: E402
from test_engine_methods import make  # noqa: E402

from tta_perception.engine.streaming import StreamingAdapter  # noqa: E402
from tta_perception.runtime import image_codec as codec  # noqa: E402


# ---------------------------------------------------------------------------------------- engine
@pytest.mark.parametrize("name", ["tent", "norm", "dplot", "source"])
def test_a_batch_of_cameras_predicts_as_one_frame_each(name):
    torch.manual_seed(0)
    adapter = StreamingAdapter(make(name, task="seg"), background=False)
    adapter.set_enabled(False)
    x = images(3, 16, 16, seed=3)
    x[1] *= 0.3  # a dark camera: its own statistics, not the others'
    batched = adapter.predict_batch(x)
    single = torch.stack([adapter.predict(x[i]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5), (batched - single).abs().max()
    adapter.close()


def test_only_the_chosen_cameras_feed_the_adaptation_window():
    adapter = StreamingAdapter(make("tent", task="seg"), window=4, adapt_every=2, background=False)
    x = images(3, 16, 16, seed=1)
    adapter.predict_batch(x, adapt=[True, False, True])
    assert len(adapter._frames) == 2 and torch.equal(adapter._frames[1], x[2])
    assert adapter.stats()["adapt_steps"] == 1  # two adapting frames: adapt_every reached
    adapter.predict_batch(x, adapt=[False, False, False])
    assert len(adapter._frames) == 2 and adapter.stats()["adapt_steps"] == 1
    with pytest.raises(ValueError, match="2 flags for 3 frames"):
        adapter.predict_batch(x, adapt=[True, False])
    adapter.close()


# ------------------------------------------------------------------------------------ node, DDS
import test_ros_helpers as H  # noqa: E402

try:
    import rclpy  # noqa: F401
    HAVE_RCLPY = True
except ImportError:
    HAVE_RCLPY = False

needs_ros = pytest.mark.skipif(not HAVE_RCLPY, reason="rclpy not installed (pip install -e '.[ros]')")

if HAVE_RCLPY:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from test_ros_helpers import harness, ros  # noqa: F401  (fixtures)
    from test_ros_node import SEG, Rig, stamp_is

    from tta_perception.ros.qos import latched_qos

CAMS = ["front", "rear", "left"]


@needs_ros
def test_each_camera_gets_its_outputs_with_its_header(ros):
    rig = Rig(ros, **dict(SEG, cameras=CAMS))
    assert rig.count("state") == "active", rig.count("config_error")
    sizes = {"front": ((48, 96), "rgb8"), "rear": ((32, 64), "bgr8"), "left": ((40, 80), "mono8")}
    for i, (cam, ((h, w), enc)) in enumerate(sizes.items()):
        ids = rig.send_until(lambda: H.image_msg(H.frame(h, w, seed=i), enc, stamp=(100 + i, 7), frame_id=cam),
                             f"{cam}/class_ids", stamp_is(100 + i, 7), topic=f"{cam}/image")
        assert ids.header.frame_id == cam and (ids.height, ids.width) == (h, w)
        rig.out(f"{cam}/overlay")
    names = H.Collector(ros.client, String, f"{rig.ns}/class_names", latched_qos()).wait(1)[0]
    assert "road" in names.data  # once per node, not per camera
    per_cam = rig.node.session.camera_diagnostics()
    assert set(per_cam) == set(CAMS) and all(per_cam[c]["frames_processed"] >= 1 for c in CAMS)
    # a camera that is not one of the node's cannot feed adaptation; a subset can, at run time
    result = rig.node.set_parameters([Parameter("adapt_cameras", value=["front", "back"])])[0]
    assert not result.successful and "'back'" in result.reason
    assert rig.node.set_parameters([Parameter("adapt_cameras", value=["front"])])[0].successful
    assert rig.node.session.adapt_flags(CAMS) == [True, False, False]


@needs_ros
def test_a_camera_that_stops_floods_or_sends_garbage_never_stalls_the_others(ros):
    cams = ["front", "stops", "floods", "garbage", "huge", "mono"]
    rig = Rig(ros, **dict(SEG, cameras=cams, max_image_pixels=4096 * 4096))
    assert rig.count("state") == "active", rig.count("config_error")
    pubs = {c: rig.pub(topic=f"{c}/image") for c in cams}
    front = rig.out("front/class_ids")
    rig.matched("front/class_ids")
    diags = H.Collector(ros.client, DiagnosticArray, "/diagnostics", 50)
    # every camera works once, then 'stops' falls silent
    for i, cam in enumerate(cams):
        rig.send_until(lambda: H.image_msg(H.frame(32, 64, seed=i), stamp=(1, i)), f"{cam}/class_ids",
                       lambda m: True, topic=f"{cam}/image")
    stop = threading.Event()

    def flood():  # 200 Hz
        k = 0
        while not stop.is_set():
            k += 1
            pubs["floods"].publish(H.image_msg(H.frame(32, 64), stamp=(2, k)))
            time.sleep(0.005)

    threading.Thread(target=flood, daemon=True).start()
    huge = H.image_msg(np.full((4096, 4096, 3), 90, np.uint8), "mono8", stamp=(3, 0))  # 16 MB
    bad = H.raw_msg("rgb8", 32, 64, 192, b"\x00" * 100, stamp=(4, 0))  # data shorter than step*height
    sent = 0
    t0 = time.monotonic()
    try:
        for k in range(30):  # 3 s of the healthy camera at 10 Hz
            pubs["front"].publish(H.image_msg(H.frame(32, 64, seed=k), stamp=(1000 + k, 0)))
            pubs["garbage"].publish(bad)
            pubs["mono"].publish(H.image_msg(H.frame(24, 48, seed=k), "mono8", stamp=(1000 + k, 0)))
            if k % 10 == 0:
                pubs["huge"].publish(huge)
            sent += 1
            time.sleep(0.1)
    finally:
        stop.set()
    H.wait_until(lambda: sum(1 for m in front.messages if m.header.stamp.sec >= 1000) >= sent - 3,
                 timeout=60, what="the healthy camera's outputs")
    assert time.monotonic() - t0 < 60
    per_cam = rig.node.session.camera_diagnostics()
    bad_frames = sum(per_cam["garbage"][r] for r in codec.REASONS)
    assert per_cam["garbage"]["frames_processed"] == 1 and bad_frames >= 20, per_cam["garbage"]
    assert sum(per_cam["front"][r] for r in codec.REASONS) == 0  # counted where they came from
    assert per_cam["floods"]["frames_dropped"] > 0 and per_cam["front"]["frames_dropped"] <= 3
    assert per_cam["stops"]["last_frame_age_s"] > 2.0 and per_cam["huge"]["frames_processed"] >= 2
    assert per_cam["mono"]["frames_processed"] >= sent - 3
    # /diagnostics: one status per camera, naming it; the silent one warns
    warn = DiagnosticStatus.WARN
    msgs = diags.wait(1, predicate=lambda m: any(s.name.endswith("camera stops") and s.level == warn for s in m.status))
    statuses = {s.name.rsplit(" ", 1)[-1]: s for s in msgs[-1].status if " camera " in s.name}
    assert set(cams) <= set(statuses) and "no frame" in statuses["stops"].message


@needs_ros
def test_domain_memory_with_several_cameras(ros, tmp_path):
    """The detector observes the first frame of each batch (adapting cameras first); each camera
    publishes the domain under its own name."""
    import json

    from tta_perception.engine.domains import calibrate, source_features

    dark = [np.clip(70 + 20 * np.random.default_rng(i).random((32, 64, 3)), 0, 255).astype(np.uint8)
            for i in range(40)]
    src = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in dark])
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps(calibrate(source_features(H.tiny_seg(), src))))
    rig = Rig(ros, **dict(SEG, cameras=["front", "rear"], domain_memory=True, domain_calibration=str(cal),
                          domain_patience=2))
    assert rig.count("state") == "active", rig.count("config_error")
    cols = {c: rig.out(f"{c}/domain", String, qos=latched_qos()) for c in ("front", "rear")}
    for i in range(3):
        for c in ("front", "rear"):
            rig.send_until(lambda: H.image_msg(dark[i], stamp=(10 + i, 0)), f"{c}/class_ids", stamp_is(10 + i),
                           topic=f"{c}/image")
    bright = np.full((32, 64, 3), 230, np.uint8)
    pubs = {c: rig.pub(topic=f"{c}/image") for c in ("front", "rear")}
    seq = iter(range(100, 10_000))

    def brighter():
        k = next(seq)
        for pub in pubs.values():
            pub.publish(H.image_msg(bright, stamp=(k, 0)))
        return rig.count("domain") == 1

    H.wait_until(brighter, what="the detector to open a new domain")
    for c, col in cols.items():
        msgs = col.wait(2)
        assert [json.loads(m.data)["id"] for m in msgs][:2] == [0, 1], c
