"""QoS profiles of the node, in one place (mismatched QoS is the most reported "no images" problem)."""
from __future__ import annotations

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

_RELIABILITY = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
    "system_default": ReliabilityPolicy.SYSTEM_DEFAULT,
}


def image_qos(reliability: str = "best_effort", depth: int = 5) -> QoSProfile:
    """Sensor-data QoS (keep last, volatile) with the reliability and depth from the parameters.

    A best-effort subscription matches both best-effort and reliable publishers (camera drivers, the
    CARLA bridge, ``ros2 bag play``); a reliable one only matches reliable publishers.
    """
    profile = QoSProfile(depth=int(depth), history=HistoryPolicy.KEEP_LAST,
                         reliability=_RELIABILITY[reliability],
                         durability=qos_profile_sensor_data.durability)
    return profile


def output_qos(depth: int = 5) -> QoSProfile:
    """Outputs: reliable keep-last, so rviz/recorders (reliable) and best-effort consumers both match."""
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def latched_qos(depth: int = 1) -> QoSProfile:
    """Transient local + reliable: late subscribers still get the class names (``label_info``)."""
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def service_qos(depth: int = 1024) -> QoSProfile:
    """The node's services: reliable with a deep keep-last queue, so a burst of calls (a peer calling
    ``~/save`` a thousand times at once) is queued and answered instead of dropped by DDS (the default
    service profile keeps 10)."""
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
