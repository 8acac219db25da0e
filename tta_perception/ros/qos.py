"""QoS profiles of the node, in one place (mismatched QoS is the most reported "no images" problem),
and the image subscription whose reliability follows its publishers (``best_available``)."""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Optional

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from rclpy.subscription import Subscription

#: rclpy passes the message info (publisher GID, sequence number) to two-argument callbacks (Iron and
#: later); Humble calls every callback with the message alone
WITH_MESSAGE_INFO = hasattr(Subscription, "CallbackType")
#: how often a ``best_available`` subscription compares its reliability with its publishers' (s)
MATCH_PERIOD_S = 0.5

_RELIABILITY = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
    "system_default": ReliabilityPolicy.SYSTEM_DEFAULT,
}


def image_qos(reliability: str = "best_effort", depth: int = 5) -> QoSProfile:
    """Sensor-data QoS (keep last, volatile) with a resolved reliability (not ``best_available``:
    ``FollowingSubscription`` resolves that) and the depth from the parameters.

    A best-effort subscription matches both best-effort and reliable publishers (camera drivers, the
    CARLA bridge, ``ros2 bag play``) but loses most large frames of a reliable one over DDS's default
    socket buffers; a reliable one only matches reliable publishers.
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


def matched_reliability(publishers: list[Any]) -> Optional[str]:
    """What ROS 2's ``BEST_AVAILABLE`` makes of a subscription's reliability: reliable if every
    publisher is (a reliable publisher's large frames then arrive, none lost), best effort if any is
    not (a reliable subscription would never hear it); None with no publisher."""
    if not publishers:
        return None
    return "reliable" if all(_kind(p) == "reliable" for p in publishers) else "best_effort"


def _kind(publisher: Any) -> str:
    return "reliable" if publisher.qos_profile.reliability == ReliabilityPolicy.RELIABLE else "best_effort"


class FollowingSubscription:
    """An image subscription whose reliability follows its publishers (``best_available``), on every
    distro, and again whenever they change.

    ROS 2's own ``BEST_AVAILABLE`` (Iron and later) is resolved once, when the subscription is made,
    and to RELIABLE when no publisher is known yet, so a best-effort camera started after the node is
    never heard; on Humble it does not exist. The node therefore resolves it itself, from
    ``get_publishers_info_by_topic``, with the same rule (``matched_reliability``), and ``check()``
    (called every ``MATCH_PERIOD_S``) makes the subscription again when the publishers ask for another
    reliability: a camera started later, a second publisher. With no publisher yet it subscribes best
    effort, which hears any publisher.

    A change is made before it breaks: the new subscription is made first and the old one destroyed
    once the new one hears every publisher (or after ``OVERLAP_S``); meanwhile a frame that comes
    through both is delivered once (the same publisher and sequence number, or on Humble the same
    ``frame_id`` and stamp), so a change loses no frame the publishers send.

    ``callback(msg, info)``: ``info`` is the message info (publisher GID, sequence number) where rclpy
    gives it, else None. ``on_change(old, new, why)`` is told each change of reliability once.
    """

    OVERLAP_S = 2.0

    def __init__(self, node: Any, msg_type: Any, topic: str, callback: Callable[[Any, Optional[dict]], None],
                 reliability: str = "best_available", depth: int = 5,
                 on_change: Callable[[str, str, str], None] = lambda old, new, why: None,
                 callback_group: Any = None) -> None:
        self._node, self._type, self._depth, self._group = node, msg_type, int(depth), callback_group
        self._callback, self._on_change, self.setting = callback, on_change, reliability
        self.reliability = ""  # what the subscription has now
        self.sub: Any = None
        self._retiring: list[Any] = []  # subscriptions replaced, destroyed once the new one hears all
        self._overlap_until = 0.0
        self._seen: collections.deque = collections.deque(maxlen=4 * self._depth + 8)
        self._lock = threading.Lock()
        self._topic = node.resolve_topic_name(topic)
        self._make(self._wanted(self._publishers()) or "best_effort")

    @property
    def topic_name(self) -> str:
        return self._topic

    def _publishers(self) -> list[Any]:
        return self._node.get_publishers_info_by_topic(self._topic) if self.setting == "best_available" else []

    def _wanted(self, publishers: list[Any]) -> Optional[str]:
        return matched_reliability(publishers) if self.setting == "best_available" else self.setting

    def _deliver(self, msg: Any, info: Optional[dict]) -> None:
        if self._retiring or time.monotonic() < self._overlap_until:  # two subscriptions: once each
            source, seq = transport_source(msg, info)
            key = (source, seq) if seq is not None else (source, msg.header.stamp.sec, msg.header.stamp.nanosec)
            with self._lock:
                if key in self._seen:
                    return
                self._seen.append(key)
        self._callback(msg, info)

    def _make(self, reliability: str) -> None:
        if self.sub is not None:
            self._retiring.append(self.sub)
            self._overlap_until = time.monotonic() + self.OVERLAP_S
        self.reliability = reliability
        if WITH_MESSAGE_INFO:
            callback: Callable[..., None] = lambda msg, info: self._deliver(msg, info)  # noqa: E731
        else:
            callback = lambda msg: self._deliver(msg, None)  # noqa: E731
        self.sub = self._node.create_subscription(self._type, self._topic, callback,
                                                  image_qos(reliability, self._depth),
                                                  callback_group=self._group)

    def _retire(self, publishers: list[Any]) -> None:
        if self._retiring and (self.sub.get_publisher_count() >= len(publishers)
                               or time.monotonic() >= self._overlap_until):
            old, self._retiring = self._retiring, []
            for sub in old:
                self._node.destroy_subscription(sub)

    def check(self) -> bool:
        """Follow the publishers (``best_available``): make the subscription again if they now ask
        for another reliability; whether it changed."""
        if self.sub is None:
            return False
        publishers = self._publishers()
        self._retire(publishers)
        wanted = self._wanted(publishers)
        if wanted is None or wanted == self.reliability:
            return False
        old = self.reliability
        kinds = sorted({_kind(p) for p in publishers})
        self._make(wanted)
        self._on_change(old, wanted, f"{len(publishers)} publisher(s): {', '.join(kinds)}")
        return True

    def publisher_count(self) -> int:
        return self.sub.get_publisher_count() if self.sub is not None else 0

    def destroy(self) -> None:
        subs, self.sub, self._retiring = [self.sub, *self._retiring], None, []
        for sub in subs:
            if sub is not None:
                self._node.destroy_subscription(sub)


def transport_source(msg: Any, info: Optional[dict]) -> tuple[Any, Optional[int]]:
    """Who sent a frame and its number, for ``lost_in_transport``: the publisher's GID and sequence
    number from the message info where rclpy gives them, else the frame's ``frame_id`` (the stamps of
    one frame_id make one chain) and no number."""
    gid = (info or {}).get("publisher_gid") or {}
    data = gid.get("data") if isinstance(gid, dict) else None
    if data:
        return bytes(data), (info or {}).get("publication_sequence_number")
    return msg.header.frame_id, None
