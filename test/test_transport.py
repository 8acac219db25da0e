"""Frames reaching the node: ``qos_reliability: best_available`` follows the publishers (a camera
started after the node, a second publisher with another QoS), and ``lost_in_transport`` counts per
publisher, exactly where the RMW gives sequence numbers, and never reads a clock jump, a loop or two
clocks on one topic as losses. Unit cases for the estimators, the rest over real DDS with the real
rclpy (publishers in another process where DDS would otherwise deliver in-process)."""
from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_ros_helpers as H  # noqa: E402

from tta_perception.runtime.health import NO_SEQUENCE, SequenceGaps, StampGaps, TransportLoss  # noqa: E402


# ------------------------------------------------------------------------------ the estimators
def _lost(chain, stamps, **kw):
    return sum(chain.add(s, **kw) for s in stamps)


def test_sequence_numbers_count_exactly_whatever_the_stamps():
    gaps = SequenceGaps()
    rng = random.Random(0)
    kept = [i for i in range(1, 1001) if rng.random() < 0.3]  # 70 % lost, as best effort at VGA
    assert sum(gaps.add(i) for i in kept) == (kept[-1] - kept[0] + 1) - len(kept)
    assert gaps.add(5) == 0  # a writer that started again: a new chain, no loss


def test_stamp_estimate_counts_losses_from_the_first_frames():
    # a quarter missing from the start: the period is learnt from the first frames, and the frames
    # lost while it was learnt count too (24 missing after the first frame that arrived)
    assert _lost(StampGaps(), [0.1 * i for i in range(100) if i % 4]) == 24
    assert _lost(StampGaps(), [0.1 * i for i in range(100) if i % 3 != 2]) == 33


def test_two_clocks_on_one_topic_are_no_loss():
    """Two publishers on one topic, one stamping sec=1, nanosec=i, the other sec=2: the old estimator
    learnt a 1 ns period and read the 1 s jump as 10^9 losses."""
    for source_a, source_b in ((None, None), ("camera", "camera"), (b"gid-a", b"gid-b")):
        loss = TransportLoss()
        lost = 0
        for i in range(600):
            lost += loss.add(1 + i * 1e-9, source_a)
            lost += loss.add(2.0, source_b)
        assert lost == 0, (source_a, lost)
    # one clock in nanosecond steps alone sets no period either
    assert _lost(StampGaps(), [1 + i * 1e-9 for i in range(100)]) == 0


def test_clock_reset_loop_and_jumps_are_no_loss():
    period = 0.1
    drive = [period * i for i in range(100)]
    # a clock reset / a restarted driver: stamps start again from 0
    assert _lost(StampGaps(), drive + drive) == 0
    # a bag played in a loop, three times
    assert _lost(StampGaps(), drive * 3) == 0
    # simulated time that jumps forward by 1 s (10 periods) every 20 frames: pauses, not losses
    jumped = [period * i + 1.0 * (i // 20) for i in range(100)]
    assert _lost(StampGaps(), jumped) == 0
    # and a real loss after a jump is still counted
    after = jumped + [jumped[-1] + period * k for k in (1, 2, 4, 5, 6)]
    assert _lost(StampGaps(), after) == 1


def test_per_publisher_chains_and_their_bound():
    loss = TransportLoss(max_sources=4)
    lost = 0
    for i in range(1, 201):  # two publishers, each numbering its own frames; b loses every 5th
        lost += loss.add(0.1 * i, b"a", i)
        if i % 5:
            lost += loss.add(7.0 + 0.1 * i, b"b", i)
    assert lost == 39  # b's 40 missing numbers, less the last (no later frame shows it)
    assert loss.add(1.0, b"a", NO_SEQUENCE) == 0  # an RMW without numbers: the stamps decide
    for k in range(10):  # ever new publishers cannot grow it
        loss.add(1.0, f"p{k}".encode(), 1)
    assert len(loss._chains) == 4


# ------------------------------------------------------------------------------ over real DDS
H.require_rclpy()

from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from test_ros_helpers import harness, ros  # noqa: E402,F401  (fixtures)
from test_ros_node import SEG, Rig  # noqa: E402

DEFAULT = {k: v for k, v in SEG.items() if k not in ("qos_reliability", "qos_depth")}  # default QoS

PUBLISHER = textwrap.dedent("""
    import sys, time
    import numpy as np, rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    sys.path.insert(0, sys.argv[1])
    import test_ros_helpers as H
    topic, reliability, n, h, w, rate, settle = (sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                                                 int(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8]))
    rclpy.init()
    node = rclpy.create_node("test_camera")
    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    pub = node.create_publisher(Image, topic, QoSProfile(depth=5, reliability=policy))
    big, small = H.frame(h, w), H.frame(32, 64)
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(settle)  # e.g. for the node's best_available check to see us and match our reliability
    print("ready", flush=True)
    for i in range(n):
        pub.publish(H.image_msg(big, stamp=divmod(i * int(1e9 / rate), 10**9)))
        time.sleep(1.0 / rate)
    for k in range(20):  # small last frames: the count up to here is known to the node
        pub.publish(H.image_msg(small, stamp=divmod((n + k) * int(1e9 / rate), 10**9)))
        time.sleep(0.05)
    print("done", flush=True)
    time.sleep(1.0)
    node.destroy_node(); rclpy.try_shutdown()
""")


def _camera(topic: str, reliability: str, n: int, size=(480, 640), rate: float = 20.0, settle: float = 1.5):
    return subprocess.Popen([sys.executable, "-c", PUBLISHER, str(H.TEST_DIR), topic, reliability, str(n),
                             str(size[0]), str(size[1]), str(rate), str(settle)],
                            env=H.subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc) -> str:
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "done" in out, out
    return out


def test_default_reliability_matches_a_camera_started_after_the_node(ros):
    """Default parameters, a reliable camera of 640x480 rgb8 started after the node: the node
    subscribes reliable once it sees the camera, and every frame arrives (best effort lost ~80 %)."""
    rig = Rig(ros, **DEFAULT)
    assert rig.node.session.cfg["qos_reliability"] == "best_available"
    proc = _camera(f"{rig.ns}/image", "reliable", 40)
    _finish(proc)
    H.wait_until(lambda: rig.count("frames_received") >= 60, timeout=10, what="every frame")
    assert rig.node._image_subs[0].reliability == "reliable"
    assert rig.count("qos_rematches") == 1 and rig.count("lost_in_transport") == 0
    assert rig.node.diagnostics()["frames_received"] == 60


def test_matching_a_camera_loses_and_repeats_no_frame(ros):
    """The camera publishes from its first moment on, while the node changes its subscription from
    best effort (no publisher yet) to reliable: the new subscription is made before the old one goes,
    and a frame heard by both is delivered once."""
    rig = Rig(ros, **DEFAULT)
    _finish(_camera(f"{rig.ns}/image", "reliable", 40, size=(32, 64), settle=0.0))
    H.wait_until(lambda: rig.count("frames_received") >= 60, timeout=10, what="every frame")
    time.sleep(0.3)
    assert rig.count("qos_rematches") == 1 and rig.node._image_subs[0].reliability == "reliable"
    assert rig.count("frames_received") == 60 and rig.count("lost_in_transport") == 0


def test_best_available_follows_a_second_publisher_and_back(ros):
    rig = Rig(ros, **DEFAULT)
    sub = rig.node._image_subs[0]
    reliable = rig.h.client.create_publisher(Image, f"{rig.ns}/image", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    H.wait_until(lambda: sub.reliability == "reliable", timeout=10, what="reliable to match the camera")
    best_effort = rig.h.client.create_publisher(Image, f"{rig.ns}/image",
                                                QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
    H.wait_until(lambda: sub.reliability == "best_effort", timeout=10, what="best effort to hear both")
    msg = H.image_msg(H.frame(32, 64), stamp=(3, 0))
    H.wait_until(lambda: best_effort.publish(msg) or rig.count("frames_received") > 0, timeout=10,
                 what="the best-effort publisher to be heard")
    rig.h.client.destroy_publisher(best_effort)
    H.wait_until(lambda: sub.reliability == "reliable", timeout=10, what="reliable again")
    assert rig.count("qos_rematches") == 3
    rig.h.client.destroy_publisher(reliable)


def test_lost_in_transport_is_exact_for_a_best_effort_subscription(ros):
    """A best-effort subscription loses large frames from another process; the node counts exactly
    those between the first frame it got and the last (the publisher's sequence numbers): frames
    received + lost_in_transport == the numbers that span."""
    rig = Rig(ros, **dict(DEFAULT, qos_reliability="best_effort"))
    numbers = []
    arrival = rig.node.session.arrival

    def spy(stamp_s, camera="", source=None, seq=None):  # records, then counts as the node does
        numbers.append(seq)
        return arrival(stamp_s, camera, source=source, seq=seq)

    rig.node.session.arrival = spy
    _finish(_camera(f"{rig.ns}/image", "reliable", 40))
    H.wait_until(lambda: numbers and numbers[-1] == 60, timeout=10, what="the last frame")
    received, lost = rig.count("frames_received"), rig.count("lost_in_transport")
    assert received == len(numbers) and received + lost == 60 - numbers[0] + 1, (received, lost, numbers)
