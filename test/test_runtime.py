"""The ROS-free runtime (no rclpy, no DDS): image conversions, the parameter table and
config/adapt.yaml, the newest-frame mailbox and statistics, the pipeline; and the launch file's
argument handling."""
from __future__ import annotations

import importlib.util
import io
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from tta_perception.runtime import image_codec as codec
from tta_perception.runtime import params as P
from tta_perception.runtime.frames import CameraSlots
from tta_perception.runtime.health import Health, percentile

REPO = Path(__file__).resolve().parents[1]
RGB = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)


# ------------------------------------------------------------------------------------------ codec
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_round_trip(encoding):
    h, w, step, data = codec.rgb_to_raw(RGB, encoding)
    out = codec.raw_to_rgb(encoding, h, w, step, data)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)


def test_bgra8_as_carla_sends_it():
    bgra = np.zeros((1, 2, 4), np.uint8)
    bgra[0, 0] = (10, 20, 30, 255)  # B, G, R, A
    out = codec.raw_to_rgb("bgra8", 1, 2, 8, bgra.tobytes())
    assert tuple(out[0, 0]) == (30, 20, 10)


def test_mono8_becomes_grey_rgb():
    grey = np.array([[0, 128, 255]], np.uint8)
    out = codec.raw_to_rgb("mono8", 1, 3, 3, grey.tobytes())
    assert out.shape == (1, 3, 3) and (out[0, 1] == 128).all()


def test_padded_rows_are_stripped():
    step = 6 * 3 + 5
    padded = np.zeros((4, step), np.uint8)
    padded[:, :18] = RGB.reshape(4, 18)
    out = codec.raw_to_rgb("rgb8", 4, 6, step, padded.tobytes())
    np.testing.assert_array_equal(out, RGB)


def test_encoding_is_case_insensitive_and_buffers_are_accepted():
    import array

    buf = array.array("B", RGB.tobytes())
    np.testing.assert_array_equal(codec.raw_to_rgb("RGB8", 4, 6, 18, buf), RGB)


@pytest.mark.parametrize("args,reason", [
    (("32FC1", 4, 6, 24, bytes(96)), codec.REASON_ENCODING),  # yuv422, 16UC1: now read, test_codec_encodings
    (("nv21", 4, 6, 6, bytes(36)), codec.REASON_ENCODING),
    (("rgb8", 4, 6, 17, bytes(68)), codec.REASON_SIZE),        # step < width * 3
    (("rgb8", 4, 6, 18, bytes(71)), codec.REASON_SIZE),        # data shorter than step * height
    (("rgb8", 4, 6, 18, bytes(73)), codec.REASON_SIZE),        # data longer
    (("rgb8", 0, 6, 18, b""), codec.REASON_EMPTY),
    (("mono8", 5, 0, 0, b""), codec.REASON_EMPTY),
    (("rgb8", 4, 6, 18, bytes(72)), None),                     # the good one, for contrast
])
def test_bad_raw_images_are_rejected_with_a_reason(args, reason):
    if reason is None:
        assert codec.raw_to_rgb(*args).shape == (4, 6, 3)
        return
    with pytest.raises(codec.ImageError) as err:
        codec.raw_to_rgb(*args)
    assert err.value.reason == reason


def test_huge_image_is_rejected_before_touching_the_data():
    with pytest.raises(codec.ImageError) as err:
        codec.raw_to_rgb("rgb8", 100_000, 100_000, 300_000, b"", max_pixels=4096 * 4096)
    assert err.value.reason == codec.REASON_HUGE


def _encode(rgb, fmt):
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format=fmt)
    return out.getvalue()


def test_compressed_png_and_jpeg_decode():
    rgb = np.repeat(np.repeat(RGB, 4, 0), 4, 1)
    np.testing.assert_array_equal(codec.compressed_to_rgb("png", _encode(rgb, "PNG")), rgb)
    jpeg = codec.compressed_to_rgb("rgb8; jpeg compressed bgr8", _encode(rgb, "JPEG"))
    assert jpeg.shape == rgb.shape and np.abs(jpeg.astype(int) - rgb).mean() < 20


@pytest.mark.parametrize("data,fmt,reason", [
    (b"\x89PNG\r\n\x1a\nnot really a png", "png", codec.REASON_DECODE),
    (b"\xff\xd8\xff garbage", "jpeg", codec.REASON_DECODE),
    (b"", "jpeg", codec.REASON_EMPTY),
    (b"1234", "16UC1; compressedDepth", codec.REASON_ENCODING),
])
def test_bad_compressed_images_are_rejected(data, fmt, reason):
    with pytest.raises(codec.ImageError) as err:
        codec.compressed_to_rgb(fmt, data)
    assert err.value.reason == reason


def test_compressed_size_is_checked_from_the_header():
    png = _encode(np.zeros((64, 64, 3), np.uint8), "PNG")
    with pytest.raises(codec.ImageError) as err:
        codec.compressed_to_rgb("png", png, max_pixels=1000)
    assert err.value.reason == codec.REASON_HUGE


def test_output_encoders():
    ids = np.array([[0, 1], [2, 255]], np.uint8)
    assert codec.mono8(ids) == (2, 2, 2, ids.tobytes())
    h, w, step, data, big = codec.float32c1(np.ones((2, 3)))
    assert (h, w, step, len(data)) == (2, 3, 12, 24)
    assert np.frombuffer(data, np.dtype(">f4" if big else "<f4")).tolist() == [1.0] * 6


# ------------------------------------------------------------------------------------ parameters
def _yaml_params():
    doc = yaml.safe_load((REPO / "config" / "adapt.yaml").read_text())
    assert list(doc) == ["/**/tta_node"], "adapt.yaml must match the node in any namespace"
    return doc["/**/tta_node"]["ros__parameters"]


def test_adapt_yaml_matches_the_parameter_table():
    values = _yaml_params()
    unknown = set(values) - set(P.SPEC)
    assert not unknown, f"adapt.yaml has parameters the node does not declare: {unknown}"
    # every parameter is in the file (class_names is commented: an empty list has no ROS type)
    assert set(P.SPEC) - set(values) == {s.name for s in P.SPECS if s.type == "str_array" and not s.default}
    for name, value in values.items():
        assert P.check(name, value) is None, P.check(name, value)
        assert value == P.SPEC[name].default, f"adapt.yaml {name}={value!r} differs from the default"


def test_adapt_yaml_is_the_rendered_table():
    assert (REPO / "config" / "adapt.yaml").read_text() == P.render_yaml(), \
        "config/adapt.yaml is out of date: regenerate it with params.render_yaml()"


def test_defaults_are_valid():
    assert P.check_all(P.defaults(), methods=P.KNOWN_METHODS) == []


@pytest.mark.parametrize("name,value,words", [
    ("method", "bogus", ["'method'", "dplot", "tent"]),
    ("task", "detection", ["'task'", "segmentation", "classification"]),
    ("device", "gpu", ["'device'", "cuda:N"]),
    ("qos_reliability", "sometimes", ["'qos_reliability'", "best_effort", "reliable"]),
    ("top_k", 0, ["'top_k'", "[1, 1000]"]),
    ("input_size", [128], ["'input_size'", "2 items"]),
    ("input_size", [4, 256], ["'input_size'", "[8, 4096]"]),
    ("lr", float("nan"), ["'lr'", "finite"]),
    ("overlay_alpha", 1.5, ["'overlay_alpha'", "[0.0, 1.0]"]),
    ("enable", "yes", ["'enable'", "bool"]),
    ("model", " ", ["'model'"]),
])
def test_bad_values_name_the_parameter_and_what_is_allowed(name, value, words):
    message = P.check(name, value, methods=P.KNOWN_METHODS)
    assert message is not None
    for word in words:
        assert word in message, message


def test_input_size_zero_means_the_models_own():
    assert P.check("input_size", [0, 0]) is None
    assert P.check("input_size", [0, 64]) is not None


def test_every_parameter_has_a_description_and_a_known_change_mode():
    for spec in P.SPECS:
        assert len(spec.description) > 15, spec.name
        assert spec.when in ("live", "reload", "subscription", "startup"), spec.name


# ------------------------------------------------------------------------------ mailbox and stats
def test_camera_slots_keep_only_the_newest_of_each_camera_and_report_drops():
    slot = CameraSlots(["front", "rear"])
    assert slot.put("rear", 1) is False
    assert slot.put("rear", 2) is True  # 1 was never taken: dropped
    assert slot.put("front", 3) is False  # another camera's frame is no drop
    assert slot.take_all(0) == [("front", 3), ("rear", 2)]  # the cameras' order
    assert slot.take_all(0) == []
    got = []
    t = threading.Thread(target=lambda: got.append(slot.take_all(30)))  # a silent camera is not awaited
    t.start()
    slot.put("rear", 4)
    t.join(30)
    assert got == [[("rear", 4)]]
    slot.close()
    assert slot.take_all(30) == [] and slot.closed


def test_health_counts_and_percentiles():
    h = Health(rate_window_s=10.0, latency_samples=4)
    for i in range(11):
        h.arrival(now=100.0 + 0.1 * i)
    for ms in (10, 20, 30, 40, 1000):  # bounded: the oldest sample (10) is gone
        h.processed(ms / 1000.0, 0.005)
    h.count("bad_size")
    s = h.snapshot(now=101.0)
    assert s["frames_received"] == 11 and s["frames_processed"] == 5 and s["bad_size"] == 1
    assert s["input_rate_hz"] == pytest.approx(10.0)
    assert s["latency_p50_ms"] in (30.0, 40.0) and s["latency_p95_ms"] == 1000.0
    assert np.isnan(percentile([], 50))


# ------------------------------------------------------------------------------------ launch file
def _launch_module():
    spec = importlib.util.spec_from_file_location("adapt_launch", REPO / "launch" / "adapt.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # no launch import at module level
    return module


def _defaults(module, **over):
    values = {k: v[0] for k, v in module.ARGUMENTS.items()}
    values.update(over)
    return values


def test_launch_defaults_point_at_the_shipped_config():
    m = _launch_module()
    assert Path(m.DEFAULT_PARAMS) == REPO / "config" / "adapt.yaml"
    s = m.node_settings(_defaults(m))
    assert (s["package"], s["executable"], s["name"]) == ("tta_perception", "tta_node", "tta_node")
    assert s["parameters"] == [m.DEFAULT_PARAMS, {"use_sim_time": False}]  # empty = from the file
    assert ("image", "/camera/image_raw") in s["remappings"]
    assert ("image/compressed", "/camera/image_raw/compressed") in s["remappings"]


def test_launch_overrides_and_remaps():
    m = _launch_module()
    s = m.node_settings(_defaults(m, image_topic="/carla/ego_vehicle/rgb_front/image", namespace="front",
                                  task="segmentation", method="tent", device="cpu", use_sim_time="true",
                                  compressed="true", params_file="/tmp/p.yaml"))
    assert s["namespace"] == "front"
    assert s["parameters"] == ["/tmp/p.yaml", {"use_sim_time": True, "task": "segmentation",
                                               "method": "tent", "device": "cpu", "compressed": True}]
    assert ("image", "/carla/ego_vehicle/rgb_front/image") in s["remappings"]
    s = m.node_settings(_defaults(m, image_topic="/cam/image_raw/compressed", compressed="true"))
    assert ("image/compressed", "/cam/image_raw/compressed") in s["remappings"]


def test_launch_several_cameras_remaps_each_to_its_topic_in_order():
    m = _launch_module()
    topics = [f"/sensing/camera/camera{i}/image_rect_color" for i in range(4)]
    s = m.node_settings(_defaults(m, cameras="front, rear,left,right", image_topics=",".join(topics)))
    assert s["parameters"][1]["cameras"] == ["front", "rear", "left", "right"]
    assert ("front/image", topics[0]) in s["remappings"] and ("right/image", topics[3]) in s["remappings"]
    assert ("rear/image/compressed", topics[1] + "/compressed") in s["remappings"]
    assert not any(local == "image" for local, _ in s["remappings"])  # image_topic is not used then
    s = m.node_settings(_defaults(m, cameras="front,rear"))  # relative: <namespace>/<camera>/image
    assert s["remappings"] == [] and s["parameters"][1]["cameras"] == ["front", "rear"]
    with pytest.raises(ValueError, match="2 topic.*3 camera"):
        m.node_settings(_defaults(m, cameras="a,b,c", image_topics="/x,/y"))


def test_launch_description_with_real_launch():
    pytest.importorskip("launch")
    pytest.importorskip("launch_ros")
    from launch.actions import DeclareLaunchArgument

    m = _launch_module()
    ld = m.generate_launch_description()
    declared = {a.name for a in ld.entities if isinstance(a, DeclareLaunchArgument)}
    assert {"image_topic", "namespace", "params_file", "task", "method", "device", "use_sim_time",
            "compressed"} <= declared


# ------------------------------------------------------------------------- pipeline (no ROS)
def test_pipeline_postprocessing_matches_softmax_and_marks_nan_unlabeled():
    import sys

    import torch

    sys.path.insert(0, str(REPO / "test"))
    import test_ros_helpers as H
    from tta_perception.runtime.pipeline import Pipeline

    cfg = P.defaults()
    cfg.update(model=H.arch("tiny_seg"), architecture=H.arch("tiny_seg"), allow_code_architecture=True, method="source", device="cpu",
               input_size=[32, 64])
    pipe = Pipeline(cfg)
    try:
        logits = torch.randn(3, 32, 64, generator=torch.Generator().manual_seed(0)) * 3
        logits[1, 5, 7] = float("nan")
        pipe.adapter.predict_batch = lambda x, adapt=None, **kw: logits.clone()[None]
        rgb = H.frame(32, 64)
        r = pipe.infer(rgb, output_size="model", confidence_float=True)
        prob = torch.softmax(logits, 0)
        expect_ids = prob.argmax(0).to(torch.uint8).numpy()
        expect_ids[5, 7] = 255
        np.testing.assert_array_equal(r.class_ids, expect_ids)
        conf = prob.max(0).values.numpy()
        conf[5, 7] = 0.0
        np.testing.assert_allclose(r.confidence, conf, atol=1e-5)
        assert np.abs(r.confidence_u8.astype(int) - np.round(conf * 255)).max() <= 1
        assert r.nonfinite and np.isfinite(r.mean_entropy)
        big = pipe.infer(H.frame(64, 128), output_size="input", overlay_alpha=1.0)
        assert big.class_ids.shape == (64, 128) and big.confidence is None  # float only on request
        np.testing.assert_array_equal(big.class_ids[::2, ::2], expect_ids)  # nearest, aligned
        np.testing.assert_array_equal(big.overlay, pipe.palette[big.class_ids])
        plain = pipe.infer(rgb, output_size="model", overlay_alpha=0.0)
        np.testing.assert_array_equal(plain.overlay, rgb)
        lean = pipe.infer(rgb, output_size="model", overlay=False, confidence=False)  # nobody listens
        np.testing.assert_array_equal(lean.class_ids, expect_ids)
        assert lean.confidence_u8 is None and lean.overlay is None and lean.nonfinite
        sub = prob[:, ::8, ::8].max(0).values.numpy()
        sub = sub[np.isfinite(sub)]
        assert lean.mean_confidence == pytest.approx(float(sub.mean()), abs=1e-4)  # every 8th pixel
    finally:
        pipe.close()
    cfg.update(input_size=[0, 0])  # the model's own size: the embedded segmentation size here
    pipe = Pipeline(cfg)
    try:
        assert pipe.input_size == (128, 256)
    finally:
        pipe.close()


def test_cuda_out_of_memory_at_load_falls_back_to_cpu(monkeypatch):
    import sys

    import torch

    sys.path.insert(0, str(REPO / "test"))
    import test_ros_helpers as H
    from tta_perception.runtime import pipeline as PL

    real = PL.load_model

    def load(model, architecture, device="cpu", **kw):
        if device != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, architecture, device=device, **kw)

    monkeypatch.setattr(PL, "resolve_device", lambda requested, label: torch.device("cuda"))
    monkeypatch.setattr(PL, "load_model", load)
    cfg = P.defaults()
    cfg.update(model=H.arch("tiny_seg"), architecture=H.arch("tiny_seg"), allow_code_architecture=True, method="tent", device="auto")
    pipe = PL.Pipeline(cfg)
    try:
        assert pipe.device == "cpu" and "out of memory" in pipe.warnings[0]
    finally:
        pipe.close()
    cfg["device"] = "cuda"  # asked for explicitly: no silent fallback
    with pytest.raises(torch.cuda.OutOfMemoryError):
        PL.Pipeline(cfg)


def test_adapter_options_resolve_predict_mode_and_worker_settings():
    import sys

    import torch

    sys.path.insert(0, str(REPO / "test"))
    from engine_fixtures import tiny_seg
    from tta_perception.engine import build_method
    from tta_perception.runtime.adapter import adapter_options
    from tta_perception.runtime.errors import ConfigError

    cfg = P.defaults()
    dplot = build_method("dplot", tiny_seg(), blocks=["block1"])
    opts = adapter_options(cfg, dplot)  # defaults on a CPU
    assert opts["predict_mode"] == "student" and opts["adapt_nice"] == cfg["adapt_nice"] == 10
    assert opts["adapt_threads"] == max(1, torch.get_num_threads() // 2)
    assert (opts["window"], opts["adapt_every"], opts["min_window"]) == (4, 4, 2)
    assert adapter_options(cfg, build_method("cotta", tiny_seg()))["predict_mode"] == "method"  # teacher only
    assert adapter_options(cfg, build_method("source", tiny_seg()))["predict_mode"] == "method"
    cfg.update(predict_mode="method", adapt_threads=3, adapt_nice=0)
    opts = adapter_options(cfg, dplot)
    assert (opts["predict_mode"], opts["adapt_threads"], opts["adapt_nice"]) == ("method", 3, 0)
    cfg["predict_mode"] = "teacher"
    with pytest.raises(ConfigError, match="predict_mode.*'tent' has no teacher"):
        adapter_options(cfg, build_method("tent", tiny_seg()))


def test_memory_estimate_refuses_what_cannot_fit_and_accepts_the_defaults():
    from tta_perception.runtime import memory
    from tta_perception.runtime.model_loader import load_model

    model = load_model("driveseg").model
    cfg = P.defaults()
    cfg.update(device="cpu")
    assert memory.check_budget(cfg, model) is None  # dplot at 128x256, window 4
    small, big = memory.estimate(cfg, model), memory.estimate({**cfg, "input_size": [256, 512]}, model)
    assert big["adaptation_step"] == pytest.approx(4 * small["adaptation_step"])  # linear in the pixels
    assert memory.estimate({**cfg, "window": 8}, model)["adaptation_step"] == pytest.approx(2 * small["adaptation_step"])
    assert memory.estimate({**cfg, "method": "source"}, model)["adaptation_step"] == 0
    # the quality's source reference: one frozen copy of the weights, the guard's when it runs
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / memory.MB
    assert small["source_reference"] == 0 and small["guard"] == 0
    assert memory.estimate({**cfg, "quality_source_every": 1}, model)["source_reference"] == pytest.approx(weights)
    shared = memory.estimate({**cfg, "quality_source_every": 1, "guard": True}, model)
    assert shared["source_reference"] == 0 and shared["guard"] > weights
    reason = memory.check_budget({**cfg, "input_size": [1024, 2048]}, model)
    assert reason and "max_memory_mb=2048" in reason and "adaptation step" in reason
    assert memory.check_budget({**cfg, "input_size": [1024, 2048], "max_memory_mb": 1 << 20}, model) is None
    # the model's own activation size, probed once: driveseg keeps ~518 bytes per input pixel
    assert 400 < memory.activation_bytes_per_pixel(model) < 700


def test_a_pipeline_over_the_budget_is_refused_before_allocating():
    from tta_perception.runtime.pipeline import ConfigError, Pipeline

    cfg = P.defaults()
    cfg.update(device="cpu", input_size=[2048, 4096])
    with pytest.raises(ConfigError, match="max_memory_mb"):
        Pipeline(cfg)


def test_pipeline_finds_checks_and_explains_the_phase_a_bundle(tmp_path, monkeypatch):
    """The default bundle is looked for at prepare's default output for the loaded architecture
    (also with 'architecture' set); one prepared for other weights is refused when named and skipped
    with a warning when found by default; without one, DPLOT's error names node parameters."""
    import sys

    sys.path.insert(0, str(REPO / "test"))
    import test_ros_helpers as H
    from tta_perception.engine.bundle import Bundle, default_bundle_path, save_bundle
    from tta_perception.runtime.errors import ConfigError
    from tta_perception.runtime.pipeline import Pipeline

    monkeypatch.chdir(tmp_path)
    cfg = P.defaults()
    cfg.update(model=H.arch("tiny_seg"), architecture=H.arch("tiny_seg"), allow_code_architecture=True,
               method="dplot", device="cpu", input_size=[32, 64])
    with pytest.raises(ConfigError) as err:
        Pipeline(cfg, background=False)
    assert "set parameter 'bundle'" in str(err.value) and "blocks=" not in str(err.value)
    weights = H.tiny_seg().state_dict()
    path = default_bundle_path(H.arch("tiny_seg"))
    path.parent.mkdir(parents=True)
    save_bundle(Bundle(["block1"], student_state=weights, teacher_state=weights,
                       metadata={"weights_id": f"builder:{H.arch('tiny_seg')}"}), path)
    pipe = Pipeline(cfg, background=False)  # found by itself, made for these weights
    assert pipe.selected_blocks() == ["block1"] and Path(pipe.bundle) == path.resolve()
    pipe.close()
    save_bundle(Bundle(["block1"], student_state=weights, teacher_state=weights,
                       metadata={"weights_id": "0" * 64, "weights": "someone else's fine-tune"}), path)
    with pytest.raises(ConfigError, match="prepared for other weights .someone else's fine-tune."):
        Pipeline(cfg, background=False)  # skipped by default: then DPLOT has no blocks
    with pytest.raises(ConfigError, match="parameter 'bundle'.*prepared for other weights"):
        Pipeline({**cfg, "bundle": str(path)}, background=False)
    cfg["method"] = "tent"  # a method without phase A never looks
    Pipeline(cfg, background=False).close()


def test_one_line_keeps_what_a_state_dict_load_says_is_wrong():
    """PyTorch's load error starts "Error(s) in loading state_dict for X:" and says what is wrong on
    the next lines: the one line the node logs keeps them."""
    import torch
    import torch.nn as nn

    from tta_perception.runtime.errors import one_line

    try:
        nn.Linear(3, 4).load_state_dict({"weight": torch.zeros(5, 3)})
    except RuntimeError as err:
        line = one_line(err)
    assert line.startswith("Error(s) in loading state_dict for Linear:") and "\n" not in line
    assert "Missing key(s)" in line or "size mismatch" in line, line
    assert one_line(ValueError("first\nsecond")) == "first" and one_line(KeyError()) == "KeyError"


def test_a_state_that_does_not_fit_says_why(tmp_path):
    """``resume_from`` with a state saved for another network: the one line names what does not fit
    (PyTorch's keys or sizes), not only "Error(s) in loading state_dict for ...:"."""
    import sys

    sys.path.insert(0, str(REPO / "test"))
    import test_ros_helpers as H
    from tta_perception.runtime.errors import ConfigError
    from tta_perception.runtime.pipeline import Pipeline

    cfg = P.defaults()
    cfg.update(model=H.arch("tiny_seg"), architecture=H.arch("tiny_seg"), allow_code_architecture=True,
               method="norm", device="cpu", input_size=[32, 64])
    saved = tmp_path / "state.pt"
    Pipeline(cfg).save_state(saved)
    other = dict(cfg, model=H.arch("tiny_cls"), architecture=H.arch("tiny_cls"), input_size=[32, 32])
    with pytest.raises(ConfigError) as err:
        Pipeline(other).load_state(saved)
    message = str(err.value)
    assert "\n" not in message and "cannot be loaded" in message, message
    assert any(k in message for k in ("Missing key", "Unexpected key", "size mismatch")), message
