"""Request storms from one DDS peer against a ``tta_node`` process (the node as it runs on a robot:
its own process, single-threaded executor), through the same code as ``node-bench --storm``: every
service call and every parameter change gets an answer, saves requested together share one write,
reloads coalesce, frames keep being answered, and the node settles on the last requested method.
Counts and outcomes are asserted; the timings are the benchmark's (README, node-bench --storm)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_ros_helpers as H  # noqa: E402

H.require_rclpy()

from tta_perception.ros.storm import run_storm  # noqa: E402


def test_a_storm_of_calls_and_parameter_changes_is_answered_and_settles():
    lines = []
    report = run_storm(node_params={"method": "tent", "device": "cpu"}, domain_id=int(os.environ["ROS_DOMAIN_ID"]),
                       log=lines.append, n_calls=1000, n_params=300, param_seconds=6.0, rate=10.0,
                       answer_timeout=120.0, settle_timeout=120.0, startup_timeout=300.0, torch_threads=1)
    s, p = report["services"], report["parameters"]
    assert report["node_alive"], lines[-5:]
    assert s["answered"] == 1000 and s["successful"] == {"save": 500, "reset": 166, "enable": 334}, s
    assert 1 <= s["saves"] < 500 and s["saves"] + s["saves_shared"] == 500, s  # calls during a save share it
    assert p["answered"] == 300 and p["accepted"] == 300, p
    assert p["settled"], p  # the running model is the last one asked for, and no reload is pending
    assert p["reload_failures"] == 0 and p["reloads"] >= 1 and p["reloads_coalesced"] >= 1, p
    assert p["reloads"] + p["reloads_coalesced"] == 150, p  # every request built or coalesced, none lost
    assert p["frames_answered"] >= p["frames_sent"] // 2, p  # the running model answered throughout
