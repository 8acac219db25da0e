"""tta_node over real DDS with the real rclpy, in one process: topics, services, parameters,
lifecycle, diagnostics and every kind of bad input. Waits are for events (generous timeouts),
never timing thresholds."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_ros_helpers as H  # noqa: E402
from test_ros_helpers import harness, ros  # noqa: E402,F401  (fixtures)

H.require_rclpy()

import torch  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from tta_perception.ros.qos import latched_qos, output_qos  # noqa: E402
from tta_perception.runtime.diagnostics import is_node_status  # noqa: E402

SEG = dict(model=H.arch("tiny_seg"), architecture=H.arch("tiny_seg"), allow_code_architecture=True, method="tent",
           input_size=[32, 64], qos_reliability="reliable", qos_depth=20, window=4, adapt_every=1)


class Rig:
    """A started node in its own namespace, an input publisher and output collectors."""

    def __init__(self, h, start=True, **params):
        self.h, self.ns = h, h.namespace()
        self.node = h.node(self.ns, start=start, **params)
        self.collectors = {}
        self.pubs = {}

    def out(self, name, msg_type=Image, qos=None):
        if name not in self.collectors:
            self.collectors[name] = H.Collector(self.h.client, msg_type, f"{self.ns}/{name}",
                                                qos or output_qos())
        return self.collectors[name]

    def pub(self, msg_type=Image, topic="image"):
        key = (msg_type, topic)
        if key not in self.pubs:
            self.pubs[key] = self.h.client.create_publisher(msg_type, f"{self.ns}/{topic}", output_qos(50))
        pub = self.pubs[key]
        H.wait_until(lambda: pub.get_subscription_count() > 0, what=f"the node to subscribe {topic}")
        return pub

    def matched(self, name):
        """Wait until the node's output publisher has matched our collector (no lost first message)."""
        H.wait_until(lambda: name in self.node._pubs and self.node._pubs[name].get_subscription_count() > 0,
                     what=f"{name} to match")

    def send_until(self, make_msg, name, predicate, msg_type=Image, topic="image", tries=60):
        """Publish until an output on ``name`` satisfies ``predicate`` (robust to discovery)."""
        col = self.out(name, String if name.endswith("json") or name == "class_names" else Image)
        pub = self.pub(msg_type, topic)
        for _ in range(tries):
            pub.publish(make_msg())
            try:
                return col.wait(1, timeout=1.0, predicate=predicate)[-1]
            except AssertionError:
                continue
        raise AssertionError(f"no matching output on {name}")

    def count(self, key):
        return self.node.diagnostics()[key]


def stamp_is(sec, nanosec=0):
    return lambda m: m.header.stamp.sec == sec and m.header.stamp.nanosec == nanosec


# ------------------------------------------------------------------------------- outputs/headers
def test_segmentation_outputs_every_encoding_with_the_input_header(ros):
    rig = Rig(ros, **SEG)
    assert rig.count("state") == "active"
    for name in ("class_ids", "confidence", "overlay", "confidence_float"):
        rig.out(name)
        if name != "confidence_float":
            rig.matched(name)
    rgb = H.frame(48, 96, seed=1)
    for i, enc in enumerate(["rgb8", "bgr8", "rgba8", "bgra8", "mono8"]):
        ids = rig.send_until(lambda: H.image_msg(rgb, enc, stamp=(10 + i, 77), frame_id=f"cam_{enc}"),
                             "class_ids", stamp_is(10 + i, 77))
        assert ids.header.frame_id == f"cam_{enc}"
        assert (ids.encoding, ids.height, ids.width, ids.step) == ("mono8", 48, 96, 96)  # input size
        values = np.frombuffer(bytes(ids.data), np.uint8)
        assert set(np.unique(values)) <= {0, 1, 2}
        conf = rig.out("confidence").wait(1, predicate=stamp_is(10 + i, 77))[0]
        assert conf.encoding == "mono8" and conf.header.frame_id == f"cam_{enc}"
        ov = rig.out("overlay").wait(1, predicate=stamp_is(10 + i, 77))[0]
        assert (ov.encoding, ov.height, ov.width, ov.step) == ("rgb8", 48, 96, 288)
    assert rig.out("confidence_float").messages == []  # off by default

    # runtime output options: 32FC1 confidence on, model-size outputs, overlay off
    assert all(r.successful for r in rig.node.set_parameters([
        Parameter("publish_confidence_float", value=True), Parameter("output_size", value="model"),
        Parameter("publish_overlay", value=False)]))
    rig.matched("confidence_float")
    ids = rig.send_until(lambda: H.image_msg(rgb, "rgb8", stamp=(50, 1)), "class_ids", stamp_is(50, 1))
    assert (ids.height, ids.width) == (32, 64)
    f32 = rig.out("confidence_float").wait(1, predicate=stamp_is(50, 1))[0]
    assert (f32.encoding, f32.step) == ("32FC1", 256)
    conf = np.frombuffer(bytes(f32.data), ">f4" if f32.is_bigendian else "<f4")
    assert ((conf >= 0) & (conf <= 1)).all() and conf.min() > 0.3  # 3 classes: max prob >= 1/3
    assert not any(stamp_is(50, 1)(m) for m in rig.out("overlay").messages)

    # class names: latched, so a subscriber that joins late still gets them
    names = H.Collector(ros.client, String, f"{rig.ns}/class_names", latched_qos()).wait(1)[0]
    import json

    payload = json.loads(names.data)
    assert payload["class_names"] == list(H.SEG_CLASSES) and payload["unlabeled"] == 255
    # the steps run on the niced background thread: wait for the first rather than race it
    H.wait_until(lambda: rig.node.diagnostics()["adaptation_steps"] >= 1, what="an adaptation step")
    d = rig.node.diagnostics()
    assert d["frames_processed"] >= 6 and d["adaptation_steps"] >= 1


def test_classification_json_and_top_k(ros):
    rig = Rig(ros, model=H.arch("tiny_cls"), architecture=H.arch("tiny_cls"), allow_code_architecture=True, method="tent",
              input_size=[16, 16], top_k=3, qos_reliability="reliable")
    import json

    msg = rig.send_until(lambda: H.image_msg(H.frame(40, 40, seed=3), "bgr8", stamp=(7, 8), frame_id="sign"),
                         "classification_json", lambda m: json.loads(m.data)["stamp"] == {"sec": 7, "nanosec": 8})
    out = json.loads(msg.data)
    assert out["frame_id"] == "sign"
    assert len(out["top_k"]) == 3
    scores = [t["score"] for t in out["top_k"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    assert out["label"] == out["top_k"][0]["class_id"] and out["score"] == scores[0]
    assert out["class_name"] == H.CLS_CLASSES[out["label"]]
    assert {t["class_name"] for t in out["top_k"]} <= set(H.CLS_CLASSES)


# ------------------------------------------------------------------------------------ bad inputs
def test_bad_frames_are_counted_and_the_node_keeps_running(ros):
    rig = Rig(ros, **SEG)
    diag = H.Collector(ros.client, DiagnosticArray, "/diagnostics", output_qos(50))
    rig.out("class_ids")
    rig.matched("class_ids")
    pub = rig.pub()
    good = H.frame(32, 64)
    rig.node.set_parameters([Parameter("max_image_pixels", value=10_000)])
    cases = [
        ("bad_encoding", H.raw_msg("16SC1", 32, 64, 128, bytes(32 * 128))),  # yuv422, 16UC1 are read now
        ("bad_encoding", H.raw_msg("32FC1", 4, 4, 16, bytes(64))),
        ("bad_size", H.raw_msg("rgb8", 32, 64, 64 * 3, bytes(100))),          # data too short
        ("bad_size", H.raw_msg("rgb8", 32, 64, 10, bytes(320))),               # step < width*3
        ("empty_image", H.raw_msg("rgb8", 0, 0, 0, b"")),
        ("huge_image", H.image_msg(H.frame(128, 128), "rgb8")),               # 16384 > 10000 px
    ]
    for i, (reason, msg) in enumerate(cases):
        before = rig.count(reason)
        pub.publish(msg)
        H.wait_until(lambda: rig.count(reason) > before, what=reason)
        # and a good frame right after is still processed
        rig.send_until(lambda: H.image_msg(good, stamp=(100 + i, 0)), "class_ids", stamp_is(100 + i))

    def counters_in_dds():
        for arr in reversed(diag.messages):
            for st in arr.status:
                if is_node_status(st.name, rig.ns):
                    values = {kv.key: kv.value for kv in st.values}
                    if int(values["huge_image"]) >= 1:
                        return values
        return None

    values = H.wait_until(counters_in_dds, what="diagnostics with the counters")
    assert int(values["bad_encoding"]) == 2 and int(values["bad_size"]) == 2
    assert int(values["empty_image"]) == 1 and int(values["huge_image"]) == 1
    for key in ("input_rate_hz", "latency_p50_ms", "latency_p95_ms", "frames_dropped", "adaptation_steps",
                "entropy", "confidence", "resets", "nan_skips", "selected_blocks", "device",
                "frames_during_reload", "undecodable", "state", "method"):
        assert key in values, key
    assert values["device"] == "cpu" and values["state"] == "active" and values["method"] == "tent"
    assert any(st.level == st.WARN and "bad frames" in st.message
               for arr in diag.messages for st in arr.status if is_node_status(st.name, rig.ns))


def test_compressed_input_switched_at_run_time_and_undecodable_data(ros):
    rig = Rig(ros, **SEG)
    assert rig.node.set_parameters([Parameter("compressed", value=True)])[0].successful
    png = H.encode(H.frame(48, 96, seed=5), "PNG")
    jpg = H.encode(H.frame(48, 96, seed=6), "JPEG")
    ids = rig.send_until(lambda: H.compressed_msg(png, "png", stamp=(3, 0)), "class_ids", stamp_is(3),
                         msg_type=CompressedImage, topic="image/compressed")
    assert (ids.height, ids.width) == (48, 96)
    rig.send_until(lambda: H.compressed_msg(jpg, "jpeg", stamp=(4, 0)), "class_ids", stamp_is(4),
                   msg_type=CompressedImage, topic="image/compressed")
    pub = rig.pub(CompressedImage, "image/compressed")
    pub.publish(H.compressed_msg(b"\x89PNG\r\n\x1a\n garbage", "png"))
    H.wait_until(lambda: rig.count("undecodable") == 1, what="undecodable counted")
    rig.send_until(lambda: H.compressed_msg(png, "png", stamp=(5, 0)), "class_ids", stamp_is(5),
                   msg_type=CompressedImage, topic="image/compressed")


def test_only_the_newest_frame_is_kept_and_drops_are_counted(ros):
    rig = Rig(ros, **SEG)
    rig.out("class_ids")
    rig.matched("class_ids")
    pub = rig.pub()
    H.FORWARD_WAITING.clear()
    H.FORWARD_GATE.clear()  # the model "takes forever" on the next frame
    pub.publish(H.image_msg(H.frame(32, 64), stamp=(200, 0)))
    assert H.FORWARD_WAITING.wait(30), "the worker never reached the model"
    for i in range(1, 7):  # arrive while the model is busy: only the newest survives
        pub.publish(H.image_msg(H.frame(32, 64, seed=i), stamp=(200 + i, 0)))
    H.wait_until(lambda: rig.count("frames_received") == 7, what="7 frames received")
    assert rig.count("frames_dropped") == 5
    H.FORWARD_GATE.set()
    out = rig.out("class_ids").wait(2)
    H.wait_until(lambda: rig.count("frames_processed") == 2, what="2 frames processed")
    assert sorted(m.header.stamp.sec for m in out) == [200, 206]
    assert rig.count("frames_dropped") == 5


def test_frames_arriving_while_the_model_reloads(ros):
    rig = Rig(ros, **dict(SEG, architecture=H.arch("gated_seg"), model=H.arch("gated_seg")))
    rig.send_until(lambda: H.image_msg(H.frame(32, 64), stamp=(1, 0)), "class_ids", stamp_is(1))
    H.BUILD_WAITING.clear()
    H.BUILD_GATE.clear()
    result = rig.node.set_parameters([Parameter("window", value=6)])[0]  # 'reload' parameter
    assert result.successful
    assert H.BUILD_WAITING.wait(30), "the reload never started building the model"
    assert rig.node.diagnostics()["reloading"] is True
    pub = rig.pub()
    pub.publish(H.image_msg(H.frame(32, 64), stamp=(2, 0)))
    H.wait_until(lambda: rig.count("frames_during_reload") >= 1, what="a frame counted during reload")
    H.BUILD_GATE.set()
    H.wait_until(lambda: not rig.node.diagnostics()["reloading"], what="the reload to finish")
    assert rig.node._pipeline.adapter.window == 6
    rig.send_until(lambda: H.image_msg(H.frame(32, 64), stamp=(3, 0)), "class_ids", stamp_is(3))
    assert rig.count("reload_failures") == 0


def test_nan_loss_is_skipped_and_counted(ros):
    rig = Rig(ros, **dict(SEG, architecture=H.arch("nan_seg"), model=H.arch("nan_seg"), window=2))
    white = np.full((32, 64, 3), 255, np.uint8)
    rig.send_until(lambda: H.image_msg(H.frame(32, 64), stamp=(1, 0)), "class_ids", stamp_is(1))
    ids = rig.send_until(lambda: H.image_msg(white, stamp=(2, 0)), "class_ids", stamp_is(2))
    assert (np.frombuffer(bytes(ids.data), np.uint8) == 255).all()  # NaN logits -> unlabeled
    pub = rig.pub()
    seq = iter(range(3, 10_000))

    def nan_skipped():
        pub.publish(H.image_msg(H.frame(32, 64), stamp=(next(seq), 0)))
        return rig.node.diagnostics()["nan_skips"] >= 1

    H.wait_until(nan_skipped, what="a NaN loss to be skipped")
    assert rig.count("nonfinite_outputs") >= 1
    # the window forgets the white frame; predictions are finite again and the node still runs
    ids = rig.send_until(lambda: H.image_msg(H.frame(32, 64, seed=9), stamp=(20_000, 0)), "class_ids",
                         lambda m: m.header.stamp.sec == 20_000 and 255 not in bytes(m.data))
    model = rig.node._pipeline.method.model
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())


# ---------------------------------------------------------------------------- services/lifecycle
def test_enable_reset_save_and_resume(ros, tmp_path):
    save = tmp_path / "state" / "adapted.pt"
    rig = Rig(ros, **dict(SEG, state_dir=str(save.parent), save_path=str(save)))
    ns = rig.ns
    for i in range(4):
        rig.send_until(lambda: H.image_msg(H.frame(32, 64, seed=i), stamp=(i + 1, 0)), "class_ids",
                       stamp_is(i + 1))
    adapter = rig.node._pipeline.adapter
    H.wait_until(lambda: adapter.stats()["adapt_steps"] >= 1, what="an adaptation step")

    # ~/enable false: inference goes on, adaptation stops (parameter follows)
    res = ros.call(SetBool, f"{ns}/tta_node/enable", SetBool.Request(data=False))
    assert res.success and "disabled" in res.message
    assert rig.node.get_parameter("enable").value is False and adapter.enabled is False
    assert adapter.wait_idle(30)
    steps = adapter.stats()["adapt_steps"]
    for i in range(3):
        rig.send_until(lambda: H.image_msg(H.frame(32, 64, seed=i), stamp=(30 + i, 0)), "class_ids",
                       stamp_is(30 + i))
    assert adapter.wait_idle(30) and adapter.stats()["adapt_steps"] == steps
    assert ros.call(SetBool, f"{ns}/tta_node/enable", SetBool.Request(data=True)).success
    assert adapter.enabled is True

    # ~/save: atomic write (no temporary left), then ~/reset
    res = ros.call(Trigger, f"{ns}/tta_node/save", Trigger.Request())
    assert res.success and res.message == str(save) and save.is_file()
    assert [p.name for p in save.parent.iterdir()] == ["adapted.pt"]
    saved = torch.load(save, weights_only=True)
    resets = rig.count("resets")
    res = ros.call(Trigger, f"{ns}/tta_node/reset", Trigger.Request())
    assert res.success and rig.count("resets") == resets + 1 and rig.count("resets_requested") == 1

    # resume_from: a new node starts from the saved adapted state
    rig2 = Rig(ros, **dict(SEG, resume_from=str(save)))
    assert rig2.count("state") == "active"
    weights = rig2.node._pipeline.method.model.state_dict()
    stored = saved["adapter"]["method_state"]["modules"]["model"]
    assert all(torch.equal(weights[k].cpu(), stored[k]) for k in stored)
    source = H.tiny_seg().state_dict()
    assert any(not torch.equal(stored[k], source[k]) for k in stored if stored[k].is_floating_point()), \
        "the saved state should differ from the source model"


def test_lifecycle_over_dds_frees_and_reloads_the_model(ros):
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    rig = Rig(ros, **SEG)
    srv = f"{rig.ns}/tta_node"
    assert ros.call(GetState, f"{srv}/get_state", GetState.Request()).current_state.id == State.PRIMARY_STATE_ACTIVE

    def change(tid):
        return ros.call(ChangeState, f"{srv}/change_state", ChangeState.Request(transition=Transition(id=tid)))

    for i in range(3):
        rig.send_until(lambda: H.image_msg(H.frame(32, 64, seed=i), stamp=(i + 1, 0)), "class_ids",
                       stamp_is(i + 1))
    adapter = rig.node._pipeline.adapter
    H.wait_until(lambda: adapter.stats()["adapt_steps"] >= 1, what="an adaptation step")
    assert adapter.wait_idle(30)
    adapted = {k: v.clone() for k, v in rig.node._pipeline.method.model.state_dict().items()}

    # deactivate frees the model (as yolo_ros), keeping the adapted state on the CPU ...
    assert change(Transition.TRANSITION_DEACTIVATE).success
    assert rig.node._image_subs == [] and rig.count("state") == "inactive"
    assert rig.node._pipeline is None
    # ... which activate restores
    assert change(Transition.TRANSITION_ACTIVATE).success
    restored = rig.node._pipeline.method.model.state_dict()
    assert all(torch.equal(restored[k], adapted[k]) for k in adapted)
    rig.send_until(lambda: H.image_msg(H.frame(32, 64), stamp=(8, 0)), "class_ids", stamp_is(8))
    assert change(Transition.TRANSITION_DEACTIVATE).success
    assert change(Transition.TRANSITION_CLEANUP).success
    assert rig.node._pipeline is None and rig.count("state") == "unconfigured"
    # reset/save answer cleanly when there is no model
    assert ros.call(Trigger, f"{srv}/reset", Trigger.Request()).success is False
    assert change(Transition.TRANSITION_CONFIGURE).success
    assert change(Transition.TRANSITION_ACTIVATE).success
    rig.send_until(lambda: H.image_msg(H.frame(32, 64), stamp=(9, 0)), "class_ids", stamp_is(9))


def test_autostart_false_waits_for_transitions(ros):
    rig = Rig(ros, start=False, **dict(SEG, autostart=False))
    rig.node.start()
    assert rig.count("state") == "unconfigured" and rig.node._pipeline is None


# ------------------------------------------------------------------------------------ parameters
def test_parameters_over_dds_are_validated_and_applied(ros):
    rig = Rig(ros, **SEG)
    srv = f"{rig.ns}/tta_node/set_parameters"

    def set_remote(name, value):
        req = SetParameters.Request(parameters=[ParameterMsg(name=name,
                                                             value=Parameter(name, value=value).get_parameter_value())])
        return ros.call(SetParameters, srv, req).results[0]

    bad = set_remote("method", "bogus")
    assert not bad.successful and "'method'" in bad.reason and "dplot" in bad.reason and "tent" in bad.reason
    bad = set_remote("device", "gpu")
    assert not bad.successful and "'device'" in bad.reason and "cuda:N" in bad.reason
    bad = set_remote("top_k", 0)
    assert not bad.successful and "top_k" in bad.reason
    bad = set_remote("qos_reliability", "sometimes")
    assert not bad.successful and "best_effort" in bad.reason
    bad = set_remote("bundle", "/nonexistent/bundle.pt")
    assert not bad.successful and "'bundle'" in bad.reason and "not found" in bad.reason
    assert rig.node.get_parameter("method").value == "tent"

    # learning rate at run time: the optimiser follows, and a reset keeps it
    assert set_remote("lr", 0.005).successful
    opt = rig.node._pipeline.method.optimizers["opt"]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)
    rig.node._pipeline.adapter.reset()
    assert rig.node._pipeline.method.optimizers["opt"].param_groups[0]["lr"] == pytest.approx(0.005)

    assert set_remote("enable", False).successful
    assert rig.node._pipeline.adapter.enabled is False
    assert rig.count("adaptation_enabled") is False


@pytest.mark.parametrize("params,words", [
    (dict(method="nope"), ["'method'", "tent", "dplot"]),
    (dict(model="no_such_model", architecture=""), ["'model'", "no_such_model"]),
    (dict(model="/nonexistent/ckpt.pt"), ["'model'", "not found"]),
    (dict(model="/nonexistent/ckpt.pt", architecture=""), ["'model'", "not found"]),
    (dict(method="dplot", bundle="/nonexistent/bundle.pt"), ["'bundle'", "not found"]),
    (dict(architecture="no_such_module:fn"), ["'architecture'", "no_such_module"]),
    (dict(device="gpu"), ["'device'", "cuda:N"]),
    (dict(task="classification"), ["'task'", "segmentation"]),
    (dict(resume_from="/nonexistent/state.pt"), ["'resume_from'", "not found"]),
    (dict(input_size=[4, 4]), ["'input_size'", "[8, 4096]"]),
    (dict(top_k=0), ["'top_k'"]),  # out of the declared range: caught at declaration
    (dict(method="dplot"), ["dplot", "bundle"]),  # dplot without its phase-A bundle
])
def test_configure_is_refused_with_one_clear_line(ros, params, words):
    rig = Rig(ros, start=False, **dict(SEG, **params))
    assert rig.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    d = rig.node.diagnostics()
    message = d["config_error"]
    assert d["state"] == "unconfigured" and "\n" not in message and "Traceback" not in message
    for word in words:
        assert word in message, message


def test_checkpoint_that_records_its_architecture(ros, tmp_path, monkeypatch):
    from tta_perception.models import registry
    from tta_perception.models.checkpoint import save_checkpoint

    monkeypatch.setitem(registry._BUILDERS, H.REGISTERED_SEG, H.tiny_seg)  # removed after the test

    model = H.tiny_seg()
    with torch.no_grad():
        model.head.bias.fill_(0.25)
    ckpt = save_checkpoint(model, tmp_path / "seg.pt", arch=H.REGISTERED_SEG)
    rig = Rig(ros, **dict(SEG, model=str(ckpt), architecture=""))
    assert rig.count("state") == "active", rig.node.diagnostics()["config_error"]
    assert torch.allclose(rig.node._pipeline.model.head.bias, torch.full((3,), 0.25))
    # a plain state dict records no architecture: the message says which parameter to set
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    rig2 = Rig(ros, start=False, **dict(SEG, model=str(plain), architecture=""))
    assert rig2.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "'architecture'" in rig2.node.diagnostics()["config_error"]
    # a checkpoint for another architecture names the mismatched keys
    other = tmp_path / "other.pt"
    torch.save({"block9.weight": torch.zeros(1)}, other)
    rig3 = Rig(ros, start=False, **dict(SEG, model=str(other)))
    assert rig3.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "block9.weight" in rig3.node.diagnostics()["config_error"]


def test_cuda_requested_without_cuda_is_refused(ros):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    rig = Rig(ros, start=False, **dict(SEG, device="cuda"))
    assert rig.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "CUDA is not available" in rig.node.diagnostics()["config_error"]


def test_auto_device_falls_back_to_cpu(ros):
    rig = Rig(ros, **dict(SEG, device="auto"))
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert rig.count("device") == expected and rig.count("state") == "active"


def test_refused_configure_can_be_fixed_and_retried(ros):
    rig = Rig(ros, start=False, **dict(SEG, method="nope"))
    assert rig.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert rig.node.set_parameters([Parameter("method", value="norm")])[0].successful
    assert rig.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert rig.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    rig.send_until(lambda: H.image_msg(H.frame(32, 64), stamp=(4, 0)), "class_ids", stamp_is(4))


def _bundle(path, blocks=("block1",)):
    from tta_perception.engine.bundle import Bundle, save_bundle

    model = H.tiny_seg()
    save_bundle(Bundle(selected_blocks=list(blocks), student_state=model.state_dict(),
                       teacher_state=model.state_dict(), metadata={"num_classes": 3}), path)
    return path


def test_dplot_with_its_bundle(ros, tmp_path):
    bundle = _bundle(tmp_path / "bundle.pt")
    rig = Rig(ros, **dict(SEG, method="dplot", bundle=str(bundle)))
    assert rig.count("state") == "active", rig.node.diagnostics()["config_error"]
    for i in range(3):
        rig.send_until(lambda: H.image_msg(H.frame(32, 64, seed=i), stamp=(i + 1, 0)), "class_ids",
                       stamp_is(i + 1))
    adapter = rig.node._pipeline.adapter
    H.wait_until(lambda: adapter.stats()["adapt_steps"] >= 1, what="a DPLOT step")
    d = rig.node.diagnostics()
    assert d["selected_blocks"] == "block1" and d["method"] == "dplot" and d["nan_skips"] == 0
    # both DPLOT learning rates at run time
    assert rig.node.set_parameters([Parameter("lr", value=0.002),
                                    Parameter("lr_consistency", value=0.0003)])[0].successful
    opts = rig.node._pipeline.method.optimizers
    assert opts["entropy"].param_groups[0]["lr"] == pytest.approx(0.002)
    assert opts["consistency"].param_groups[0]["lr"] == pytest.approx(0.0003)


def test_corrupt_bundle_is_refused(ros, tmp_path):
    bad = tmp_path / "bundle.pt"
    bad.write_bytes(b"not a bundle")
    rig = Rig(ros, start=False, **dict(SEG, method="dplot", bundle=str(bad)))
    assert rig.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    message = rig.node.diagnostics()["config_error"]
    assert "dplot" in message and str(bad) in message and "\n" not in message


@pytest.mark.parametrize("name,task", [("driveseg", "segmentation"), ("signnet", "classification")])
def test_embedded_model_with_its_committed_weights(ros, name, task):
    from tta_perception.models.checkpoint import read_manifest

    if name not in read_manifest():
        pytest.skip(f"no committed weights for {name} yet")
    rig = Rig(ros, model=name, method="norm", qos_reliability="reliable")
    assert rig.count("state") == "active", rig.node.diagnostics()["config_error"]
    assert rig.node._pipeline.task == task
    if task == "segmentation":
        ids = rig.send_until(lambda: H.image_msg(H.frame(128, 256), "bgra8", stamp=(1, 2)), "class_ids",
                             stamp_is(1, 2))
        assert (ids.height, ids.width) == (128, 256)
    else:
        import json

        msg = rig.send_until(lambda: H.image_msg(H.frame(32, 32), "rgb8", stamp=(1, 2)), "classification_json",
                             lambda m: json.loads(m.data)["stamp"] == {"sec": 1, "nanosec": 2})
        assert json.loads(msg.data)["class_name"] in rig.node._pipeline.class_names


def test_cuda_out_of_memory_at_run_time_reloads_on_cpu(ros):
    rig = Rig(ros, **dict(SEG, device="auto"))
    pipe = rig.node._pipeline
    pipe.device = "cuda"  # pretend, then fail the next frame the way CUDA does

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    pipe.infer_batch = oom
    rig.pub().publish(H.image_msg(H.frame(32, 64), stamp=(1, 0)))
    H.wait_until(lambda: rig.count("cuda_oom") == 1, what="the out-of-memory to be counted")
    rig.send_until(lambda: H.image_msg(H.frame(32, 64), stamp=(2, 0)), "class_ids", stamp_is(2))
    assert rig.node._pipeline is not pipe and rig.count("device") == "cpu"
