"""tta_node against hostile and mistaken parameters, over real DDS with the real rclpy: no parameter
ever imports code, user code cannot wedge a reload, run-time changes are transactions (refused at
once where they can be judged, rolled back where only the reload can tell), diagnostics describe
the model that runs, and unfinished saves of killed processes are cleaned up."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_ros_helpers as H  # noqa: E402

H.require_rclpy()

import torch  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from test_ros_helpers import harness, ros  # noqa: E402,F401  (fixtures)
from test_ros_node import SEG, Rig, stamp_is  # noqa: E402


def _set(rig, **values):
    """One transaction (ROS: set_parameters_atomically; set_parameters applies one at a time)."""
    return rig.node.set_parameters_atomically([Parameter(k, value=v) for k, v in values.items()])


def _serves(rig, sec):
    return rig.send_until(lambda: H.image_msg(H.frame(32, 64), stamp=(sec, 0)), "class_ids", stamp_is(sec))


@pytest.mark.parametrize("value", ["os:abort", "sys:exit", "builtins:exec", "subprocess:call",
                                   H.arch("tiny_seg")])
def test_a_runtime_parameter_never_imports_a_module(ros, value):
    rig = Rig(ros, **SEG)  # allow_code_architecture is true: still refused at run time
    _serves(rig, 1)
    result = _set(rig, architecture=value)
    assert not result.successful and "'architecture'" in result.reason and "start-up" in result.reason
    assert rig.node.get_parameter("architecture").value == SEG["architecture"]
    assert not rig.count("reloading") and rig.count("reload_failures") == 0
    _serves(rig, 2)


def test_the_code_opt_in_is_read_only(ros):
    rig = Rig(ros, **dict(SEG, architecture="", model="driveseg", allow_code_architecture=False))
    result = _set(rig, allow_code_architecture=True)
    assert not result.successful
    assert rig.node.get_parameter("allow_code_architecture").value is False
    assert not _set(rig, max_memory_mb=100_000).successful


def test_module_function_needs_the_opt_in_at_start_up(ros):
    rig = Rig(ros, start=False, **dict(SEG, allow_code_architecture=False))
    from rclpy.lifecycle import TransitionCallbackReturn

    assert rig.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    message = rig.count("config_error")
    assert "allow_code_architecture" in message and "\n" not in message


def test_user_code_that_exits_never_wedges_a_reload(ros):
    H._BUILDS["exit"] = 0
    rig = Rig(ros, **dict(SEG, architecture=H.arch("exit_on_rebuild"), model=H.arch("exit_on_rebuild")))
    _serves(rig, 1)
    assert _set(rig, window=6).successful  # the reload builds the user's model again: it calls sys.exit
    H.wait_until(lambda: rig.count("reload_failures") == 1 and not rig.count("reloading"), what="the reload to fail")
    d = rig.node.diagnostics()
    assert "SystemExit" in d["reload_error"] and "rolled back" in d["reload_error"] and d["rollbacks"] == 1
    assert rig.node.get_parameter("window").value == 4  # rolled back to what runs
    _serves(rig, 2)


def test_an_installed_package_can_declare_an_architecture(ros, tmp_path, monkeypatch):
    """The entry-point group 'tta_perception.architectures': usable by name at run time."""
    dist = tmp_path / "my_nets-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-nets\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tta_perception.architectures]\nmy_tiny_seg = test_ros_helpers:tiny_seg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rig = Rig(ros, **dict(SEG, allow_code_architecture=False, architecture="driveseg", model="driveseg",
                          input_size=[32, 64]))
    assert rig.count("state") == "active", rig.count("config_error")
    assert _set(rig, architecture="my_tiny_seg", model="my_tiny_seg").successful
    H.wait_until(lambda: rig.count("architecture") == "my_tiny_seg" and not rig.count("reloading"),
                 what="the reload to the declared architecture")
    assert rig.count("reload_failures") == 0 and rig.node._pipeline.model.num_classes == 3
    _serves(rig, 3)


@pytest.mark.parametrize("values,words", [
    ({"device": "cuda:99"}, ["'device'", "cuda:99"]),
    ({"model": "resnet9000"}, ["'model'", "resnet9000"]),
    ({"class_names": ["a", "b"]}, ["'class_names'", "3 classes"]),
    ({"task": "classification"}, ["'task'", "segmentation"]),
    ({"predict_mode": "teacher"}, ["'predict_mode'", "tent"]),
    ({"input_size": [1024, 2048]}, ["max_memory_mb"]),
    ({"input_size": [4096, 4096], "window": 64}, ["max_memory_mb"]),
    ({"architecture": "resnet9000"}, ["'architecture'", "resnet9000"]),
    ({"model": "/nonexistent/x.pt", "architecture": ""}, ["'model'", "not found"]),
])
def test_what_can_be_judged_at_once_is_refused_in_the_answer(ros, values, words):
    if "device" in values and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    rig = Rig(ros, **SEG)
    before = {k: rig.node._read(k) for k in values}
    result = _set(rig, **values)
    assert not result.successful and "\n" not in result.reason
    for word in words:
        assert word in result.reason, result.reason
    assert {k: rig.node._read(k) for k in values} == before == {k: rig.node.session.cfg[k] for k in values}
    assert not rig.count("reloading") and rig.count("reload_failures") == 0
    _serves(rig, 5)


def test_what_only_the_reload_can_tell_is_rolled_back(ros, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all" * 10)
    rig = Rig(ros, **SEG)
    _serves(rig, 1)
    assert _set(rig, model=str(corrupt)).successful  # a file that exists: only loading it tells
    H.wait_until(lambda: rig.count("reload_failures") == 1 and not rig.count("reloading"), what="the failure")
    d = rig.node.diagnostics()
    assert rig.node.get_parameter("model").value == SEG["model"] and d["model"] == SEG["model"]
    assert "rolled back" in d["reload_error"] and "corrupt.pt" in d["reload_error"] and d["rollbacks"] == 1
    # the next change reloads from the configuration that works, not from the bad one
    assert _set(rig, window=6).successful
    H.wait_until(lambda: rig.node._pipeline.adapter.window == 6 and not rig.count("reloading"), what="the reload")
    assert rig.count("reload_failures") == 1 and rig.count("reload_error") == ""
    _serves(rig, 2)


def test_diagnostics_describe_the_model_that_runs(ros):
    rig = Rig(ros, **dict(SEG, architecture=H.arch("gated_seg"), model=H.arch("gated_seg")))
    _serves(rig, 1)
    H.BUILD_WAITING.clear()
    H.BUILD_GATE.clear()
    try:
        assert _set(rig, method="norm").successful
        assert H.BUILD_WAITING.wait(30)
        assert rig.count("method") == "tent" and rig.count("reloading")  # asked: norm; runs: tent
    finally:
        H.BUILD_GATE.set()
    H.wait_until(lambda: rig.count("method") == "norm", what="the reload to norm")


def test_unfinished_saves_of_killed_processes_are_removed_at_configure(ros, tmp_path):
    save = tmp_path / "state" / "adapted.pt"
    save.parent.mkdir()
    dead = save.parent / ".adapted.pt.999999999-0.tmp"  # no such process
    live = save.parent / f".adapted.pt.{os.getpid()}-7.tmp"  # a save in progress of a live process
    other = save.parent / "notes.txt"
    for f in (dead, live, other):
        f.write_bytes(b"x")
    Rig(ros, **dict(SEG, state_dir=str(save.parent), save_path=str(save)))
    assert not dead.exists() and live.exists() and other.exists()


def test_domain_memory_in_the_node_publishes_the_domain_and_reports_it(ros, tmp_path):
    """A node with domain memory: the latched ``domain`` topic changes when the weather does, and
    /diagnostics carries the detector's view."""
    import json

    import numpy as np
    from std_msgs.msg import String

    from tta_perception.engine.domains import calibrate, source_features
    from tta_perception.ros.qos import latched_qos

    model = H.tiny_seg()
    dark = [np.clip(70 + 20 * np.random.default_rng(i).random((32, 64, 3)), 0, 255).astype(np.uint8)
            for i in range(40)]
    src = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in dark])
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps(calibrate(source_features(model, src))))
    save = tmp_path / "state" / "adapted.pt"
    dm = dict(SEG, domain_memory=True, domain_calibration=str(cal), domain_patience=2)
    rig = Rig(ros, **dict(dm, state_dir=str(save.parent), save_path=str(save)))
    assert rig.count("state") == "active", rig.count("config_error")
    col = rig.out("domain", String, qos=latched_qos())
    pub = rig.pub()
    for i in range(4):
        rig.send_until(lambda: H.image_msg(dark[i], stamp=(10 + i, 0)), "class_ids", stamp_is(10 + i))
    bright = np.full((32, 64, 3), 230, np.uint8)
    seq = iter(range(100, 10_000))
    H.wait_until(lambda: pub.publish(H.image_msg(bright, stamp=(next(seq), 0))) or rig.count("domain") == 1,
                 what="the detector to open a new domain")
    msgs = col.wait(2)
    ids = [json.loads(m.data)["id"] for m in msgs]
    assert ids[:2] == [0, 1] and json.loads(msgs[1].data)["new"] is True
    d = rig.node.diagnostics()
    assert d["domains_known"] == 2 and d["domain_distance"] >= 0
    # ~/save keeps the bank; a restarted node (resume_from, as after kill -9) knows both domains
    # before its first frame and stays in the one it was in
    from std_srvs.srv import Trigger

    assert ros.call(Trigger, f"{rig.ns}/tta_node/save", Trigger.Request()).success
    rig2 = Rig(ros, **dict(dm, resume_from=str(save)))
    assert rig2.count("state") == "active", rig2.count("config_error")
    memory = rig2.node._pipeline.adapter.domains
    assert memory is not None and sorted(memory.detector.centroids) == [0, 1] and memory.detector.current == 1
    # domain 0's adapted state: in the bank, or (saved before the step that banks it) the restored
    # live state with the pending switch that banks it at the restarted node's first step
    pending = memory.pending
    assert 0 in memory.bank or (pending is not None and pending.previous == 0 and pending.domain == 1)
