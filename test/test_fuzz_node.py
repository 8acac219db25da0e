"""Fuzz and fault injection against a real tta_node over DDS (real rclpy, real files), seeded:
malformed raw and compressed frames, hostile parameter values, NaN frames for every method, and
kill -9 during ~/save. After each round the node must be alive and answer a valid frame with its
stamp; counters must add up; bad parameters are refused or rolled back; nothing is written outside
the test's folder."""
from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_ros_helpers as H  # noqa: E402

H.require_rclpy()

import torch  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from test_ros_helpers import harness, ros  # noqa: E402,F401  (fixtures)
from test_ros_node import SEG, Rig, _bundle, stamp_is  # noqa: E402

from tta_perception.runtime import params as P  # noqa: E402

SEED = 20261201
ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "yuv422", "bayer_rggb8", "rgb16", "mono16", "32FC1",
             "16UC3", "", "RGB8", "jpeg", "\x00", "rgb8; DROP TABLE", "a" * 300]


def _valid(rig, sec):
    return rig.send_until(lambda: H.image_msg(H.frame(32, 64, seed=sec), stamp=(sec, 0)), "class_ids",
                          stamp_is(sec))


def _raw_case(rng: random.Random):
    enc = rng.choice(ENCODINGS)
    h, w = rng.choice([0, 1, 2, 31, 32, 64, 4097, 1 << 20]), rng.choice([0, 1, 3, 64, 130, 1 << 20])
    step = rng.choice([0, w, w * 3, w * 4, w * 3 + 7, (1 << 31) - 1, rng.randrange(0, 5000)])
    n = rng.choice([0, 1, h * step if h * step < 1 << 20 else 10, rng.randrange(0, 30000)])
    return H.raw_msg(enc, h, w, step, bytes(rng.getrandbits(8) for _ in range(min(n, 30000))),
                     stamp=(1, rng.randrange(1 << 30)))


def _compressed_case(rng: random.Random):
    good = H.encode(H.frame(32, 64, seed=rng.randrange(100)), rng.choice(["PNG", "JPEG"]))
    kind = rng.randrange(6)
    if kind == 0:
        data = good[: rng.randrange(1, len(good))]  # truncated
    elif kind == 1:
        data = bytearray(good)
        for _ in range(20):
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        data = bytes(data)
    elif kind == 2:
        data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    elif kind == 3:
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 4000)))
    elif kind == 4:
        data = b"\x89PNG\r\n\x1a\n" + bytes(rng.getrandbits(8) for _ in range(200))
    else:
        data = b"\xff\xd8\xff" + bytes(rng.getrandbits(8) for _ in range(200))
    fmt = rng.choice(["png", "jpeg", "", "tiff", "rgb8; jpeg compressed bgr8", "16UC1; compressedDepth png"])
    return H.compressed_msg(data, fmt, stamp=(1, rng.randrange(1 << 30)))


def test_malformed_frames_never_stop_the_node_and_the_counters_add_up(ros):
    rng = random.Random(SEED)
    rig = Rig(ros, **SEG)
    _valid(rig, 1)
    pub = rig.pub()
    for _ in range(120):
        pub.publish(_raw_case(rng))
    _valid(rig, 2)
    assert rig.node.set_parameters([Parameter("compressed", value=True)])[0].successful
    cpub = rig.pub(CompressedImage, "image/compressed")
    for _ in range(60):
        cpub.publish(_compressed_case(rng))
    rig.send_until(lambda: H.compressed_msg(H.encode(H.frame(32, 64), "PNG"), "png", stamp=(3, 0)), "class_ids",
                   stamp_is(3), msg_type=CompressedImage, topic="image/compressed")

    def settled():
        d = rig.node.diagnostics()
        accounted = (d["frames_processed"] + d["frames_dropped"] + d["frames_during_reload"]
                     + d["inference_errors"] + sum(d[r] for r in ("bad_encoding", "bad_size", "empty_image",
                                                                  "huge_image", "undecodable")))
        return d if accounted == d["frames_received"] else None

    d = H.wait_until(settled, what="every received frame accounted for")
    assert d["inference_errors"] == 0 and d["state"] == "active"
    assert d["bad_encoding"] + d["bad_size"] + d["empty_image"] + d["huge_image"] + d["undecodable"] > 0


def _hostile_value(rng: random.Random, spec):
    choices = [None, "", "x" * 5000, "os:abort", "sys:exit", "../../../etc/passwd", "\x1b[31m", -1, 0, 2**63 - 1,
               -(2**63), float("nan"), float("inf"), 1e308, True, False, [1, 2, 3], [0, 0], [99999, 99999],
               [8, 8], ["a", "b"], [], "cuda:99", "auto", "classification", "teacher", "dplot", "resnet9000"]
    if spec.choices:
        choices += list(spec.choices)
    return rng.choice(choices)


def test_hostile_parameters_are_refused_or_rolled_back(ros, tmp_path):
    rng = random.Random(SEED + 1)
    rig = Rig(ros, **dict(SEG, state_dir=str(tmp_path), save_path=str(tmp_path / "s.pt")))
    _valid(rig, 1)
    skip = {"save_path", "resume_from", "bundle", "autostart", "enable"}  # files / lifecycle: covered elsewhere
    names = [s.name for s in P.SPECS if s.name not in skip]
    for i in range(80):
        name = rng.choice(names)
        value = _hostile_value(rng, P.SPEC[name])
        try:
            param = Parameter(name, value=value)
        except (TypeError, ValueError):
            continue  # no ROS type for it: cannot even be sent
        result = rig.node.set_parameters([param])[0]
        if result.successful:
            assert P.check(name, rig.node.session.cfg[name]) is None, (name, value)
        else:
            assert result.reason and "\n" not in result.reason
        H.wait_until(lambda: not rig.node.diagnostics()["reloading"], timeout=300, what="a reload to settle")
        if i % 10 == 9:
            # the configuration in force is one that loads: the node still answers with its stamp
            rig.node.set_parameters([Parameter("compressed", value=False), Parameter("input_size", value=[32, 64]),
                                     Parameter("enable", value=True)])
            H.wait_until(lambda: not rig.node.diagnostics()["reloading"], timeout=300, what="the reload")
            _valid(rig, 100 + i)
    d = rig.node.diagnostics()
    assert d["state"] == "active" and d["reload_failures"] == d["rollbacks"]  # every failed reload rolled back
    _valid(rig, 1000)


@pytest.mark.parametrize("method", ["source", "norm", "tent", "eata", "sar", "cotta", "rmt", "dplot"])
def test_nan_frames_for_every_method(ros, tmp_path, method):
    extra = {"bundle": str(_bundle(tmp_path / "b.pt"))} if method in ("dplot", "rmt") else {}
    rig = Rig(ros, **dict(SEG, method=method, architecture=H.arch("nan_seg"), model=H.arch("nan_seg"),
                          window=2, adapt_every=1, **extra))
    assert rig.count("state") == "active", rig.count("config_error")
    white = np.full((32, 64, 3), 255, np.uint8)  # NaN features in this model
    pub = rig.pub()
    for i in range(6):
        pub.publish(H.image_msg(white, stamp=(50 + i, 0)))
        time.sleep(0.05)
    _valid(rig, 2)
    adapter = rig.node._pipeline.adapter
    assert adapter.wait_idle(60)
    for key, m in rig.node._pipeline.method.modules.items():
        for name, t in m.state_dict().items():
            if t.is_floating_point():
                assert torch.isfinite(t).all(), (method, key, name)
    ids = rig.send_until(lambda: H.image_msg(H.frame(32, 64, seed=9), stamp=(3000, 0)), "class_ids",
                         lambda m: m.header.stamp.sec == 3000)
    assert 255 not in bytes(ids.data)  # a clean frame after NaN frames is predicted finitely
    d = rig.node.diagnostics()
    assert d["collapse_resets"] == 0 and d["inference_errors"] == 0


def test_kill_9_during_save_keeps_the_previous_or_the_new_state(harness, tmp_path):
    """A node process killed (SIGKILL) while it saves: the state file is always complete (old or
    new), the unfinished temporary files are removed at the next start, nothing lands elsewhere."""
    import test_ros_process as RP

    rng = random.Random(SEED + 2)
    save = tmp_path / "state" / "adapted.pt"
    repo_before = {p.name for p in H.REPO.iterdir()}
    env = H.subprocess_env(ROS_HOME=str(tmp_path / "ros_home"))
    h = harness  # this module's DDS participant (a second context in one process only adds risk)
    for attempt in range(4):
        ns = f"/xkill{os.getpid()}_{attempt}"
        cmd = [sys.executable, "-m", "tta_perception.ros.tta_node", "--ros-args", "-r", f"__ns:={ns}",
               "-p", f"model:={H.arch('tiny_seg')}", "-p", f"architecture:={H.arch('tiny_seg')}",
               "-p", "allow_code_architecture:=true", "-p", "method:=tent", "-p", "device:=cpu",
               "-p", f"state_dir:={save.parent}", "-p", f"save_path:={save}"]
        proc = RP.Proc(cmd, env)
        try:
            cli = h.client.create_client(Trigger, f"{ns}/tta_node/save")
            H.wait_until(lambda: cli.wait_for_service(timeout_sec=0.1) or proc.p.poll() is not None,
                         timeout=300, what="the save service")
            assert proc.p.poll() is None, proc.text[-2000:]
            for _ in range(3):
                cli.call_async(Trigger.Request())  # saves in flight...
            time.sleep(rng.uniform(0.0, 0.3))
            proc.p.send_signal(signal.SIGKILL)  # ...killed mid-way, at a seeded moment
            proc.p.wait(30)
        finally:
            h.client.destroy_client(cli)
            if proc.p.poll() is None:
                proc.p.kill()
        if save.exists():  # old or new, never half-written
            state = torch.load(save, weights_only=True)
            assert state["format"] == "tta_perception.ros/1"
    # the next start removes what the killed saves left behind
    leftovers = [p for p in save.parent.iterdir() if p.name.endswith(".tmp")] if save.parent.exists() else []
    ns = f"/xkill{os.getpid()}_last"
    proc = RP.Proc([sys.executable, "-m", "tta_perception.ros.tta_node", "--ros-args", "-r", f"__ns:={ns}",
                    "-p", "method:=tent", "-p", "device:=cpu", "-p", f"state_dir:={save.parent}",
                    "-p", f"save_path:={save}"], env)
    try:
        H.wait_until(lambda: "configured:" in proc.text or proc.p.poll() is not None, timeout=300,
                     what="the restart")
    finally:
        assert proc.stop() == 0, proc.text[-2000:]
    if save.parent.exists():
        assert not [p for p in save.parent.iterdir() if p.name.endswith(".tmp")], leftovers
    assert {p.name for p in H.REPO.iterdir()} == repo_before  # nothing written into the checkout
