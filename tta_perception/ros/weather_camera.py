"""``weather_camera``: the embedded world as a ROS 2 camera driving through a weather schedule.

Publishes, all with the same header stamp:
- ``camera/image_raw`` (``sensor_msgs/Image``; rgb8, bgr8, rgba8, bgra8 as the CARLA bridge, or mono8),
- ``camera/ground_truth/class_ids`` (mono8 class ids, 255 = unlabeled),
- ``weather`` (``std_msgs/String``, JSON: the stamp, the schedule's ``WeatherParameters`` and domain),
and its health on ``/diagnostics``.

Frame ``k`` is frame ``start_frame + k * frame_stride`` of the schedule, rendered exactly as
``SequenceRenderer`` renders it (the same pixels as ``make-bag`` and the benchmark); ``rate`` sets
how often a frame is published, so ``rate = fps / frame_stride`` runs the world in real time and a
larger rate fast-forwards it. Stamps come from the node's clock (``use_sim_time`` works: the timer
and the stamps follow ``/clock``; nothing is published before the clock has started).

Rendering (~30 ms at 128x256) runs on a render-ahead thread with a small bounded queue, so the timer
callback only converts and publishes; if rendering falls behind, a tick is skipped and counted
(``late_ticks``) rather than publishing stale frames in a burst.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from typing import Any, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from ..runtime import image_codec as codec
from ..runtime.messages import IMAGE_TOPIC, TRUTH_TOPIC, WEATHER_TOPIC, stamp_to_ns, weather_json
from .convert import mono8_image, rgb_image
from .spin import ConfigError, declare_parameters, describe, format_help, publish_status, spin_node, table_help

NODE_NAME = "weather_camera"
ENCODINGS = tuple(codec.ENCODINGS)  # what codec.rgb_to_raw writes, not every INPUT_ENCODINGS

# name -> (default, description, extra descriptor fields)
PARAMS: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "schedule": ("dynamic", "Weather schedule: a shipped sequence name (clear, day2night, clear2fog, "
                 "clear2rain, dynamic) or the path of a schedule YAML (format: world/schedule.py).", {}),
    "rate": (0.0, "Frames published per second; 0: the schedule's fps / frame_stride (real time).",
             {"float_range": (0.0, 1000.0)}),
    "width": (256, "Image width in pixels.", {"int_range": (8, 4096)}),
    "height": (128, "Image height in pixels.", {"int_range": (8, 4096)}),
    "encoding": ("rgb8", "Image encoding: " + ", ".join(ENCODINGS) + " (bgra8 is what the CARLA bridge "
                 "sends).", {}),
    "frame_id": ("camera", "header.frame_id of every message.", {}),
    "seed": (-1, "World seed (layout of the street); -1: the schedule's.", {"int_range": (-1, 2**31 - 1)}),
    "start_frame": (0, "First frame of the schedule.", {"int_range": (0, 2**31 - 1)}),
    "frame_stride": (1, "Advance the schedule by this many frames per published frame (fast-forward "
                     "without rendering the skipped frames).", {"int_range": (1, 10000)}),
    "max_frames": (0, "Stop publishing after this many frames; 0: never.", {"int_range": (0, 2**31 - 1)}),
    "wait_for_subscribers": (0, "Start publishing only once this many subscribers listen to the image "
                             "(e.g. the adaptation nodes, which take seconds to load); 0: at once.",
                             {"int_range": (0, 1000)}),
    "wait_for_truth_subscribers": (0, "Also wait until this many subscribers listen to the ground truth "
                                   "and the weather (the evaluator); 0: do not wait for them.",
                                   {"int_range": (0, 1000)}),
    "publish_ground_truth": (True, "Publish the mono8 class-id ground truth.", {}),
    "reliability": ("reliable", "QoS reliability of the camera and ground truth (reliable matches both "
                    "reliable and best-effort subscribers).", {}),
    "depth": (5, "QoS depth (keep last) of the publishers.", {"int_range": (1, 1000)}),
    "prefetch": (3, "Frames rendered ahead on the render thread.", {"int_range": (1, 64)}),
    "diagnostics_period": (1.0, "Seconds between /diagnostics messages.", {"float_range": (0.05, 60.0)}),
}


class WeatherCamera(Node):
    """See the module docstring."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.cfg = declare_parameters(self, PARAMS)
        self._check(self.cfg)
        from tta_perception.world.schedule import load_schedule
        from tta_perception.world.sequences import SequenceRenderer

        try:
            self.schedule = load_schedule(self.cfg["schedule"])
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"parameter 'schedule': {err}") from None
        seed = None if self.cfg["seed"] < 0 else int(self.cfg["seed"])
        self.renderer = SequenceRenderer(self.schedule, seed, (int(self.cfg["height"]), int(self.cfg["width"])))
        self.rate = float(self.cfg["rate"]) or self.schedule.fps / int(self.cfg["frame_stride"])

        qos = QoSProfile(depth=int(self.cfg["depth"]), history=HistoryPolicy.KEEP_LAST,
                         reliability=(ReliabilityPolicy.RELIABLE if self.cfg["reliability"] == "reliable"
                                      else ReliabilityPolicy.BEST_EFFORT),
                         durability=DurabilityPolicy.VOLATILE)
        # latest weather for late joiners (an evaluator or a dashboard started after the camera)
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        weather_qos = QoSProfile(depth=max(10, int(self.cfg["depth"])), history=HistoryPolicy.KEEP_LAST,
                                 reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        self.image_pub = self.create_publisher(Image, IMAGE_TOPIC, qos)
        self.truth_pub = (self.create_publisher(Image, TRUTH_TOPIC, qos)
                          if self.cfg["publish_ground_truth"] else None)
        self.weather_pub = self.create_publisher(String, WEATHER_TOPIC, weather_qos)
        self.weather_latched_pub = self.create_publisher(String, WEATHER_TOPIC + "/latest", latched)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self.published = 0
        self.started = int(self.cfg["wait_for_subscribers"]) == 0 and int(self.cfg["wait_for_truth_subscribers"]) == 0
        self.late_ticks = 0
        self.waiting_for_clock = 0
        self.render_ms: list[float] = []
        self._next_index = int(self.cfg["start_frame"])
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=int(self.cfg["prefetch"]))
        self._stop = threading.Event()
        self._render_error = ""
        self._thread = threading.Thread(target=self._render_loop, name="weather_camera_render", daemon=True)
        self._thread.start()
        self.done = threading.Event()
        self._timer = self.create_timer(1.0 / self.rate, self._tick)
        self._diag_timer = self.create_timer(float(self.cfg["diagnostics_period"]), self._diagnostics)
        self.get_logger().info(
            f"schedule {self.schedule.name!r} ({len(self.schedule.keyframes)} keyframes, "
            f"{'loop' if self.schedule.loop else 'hold'}), {self.cfg['width']}x{self.cfg['height']} "
            f"{self.cfg['encoding']} at {self.rate:g} Hz, frames from {self.cfg['start_frame']} every "
            f"{self.cfg['frame_stride']}")

    @staticmethod
    def _check(cfg: dict[str, Any]) -> None:
        if cfg["encoding"] not in ENCODINGS:
            raise ConfigError(f"parameter 'encoding' must be one of {', '.join(ENCODINGS)}; "
                              f"got {cfg['encoding']!r}")
        if cfg["reliability"] not in ("reliable", "best_effort"):
            raise ConfigError(f"parameter 'reliability' must be reliable or best_effort; got {cfg['reliability']!r}")
        if cfg["rate"] < 0:
            raise ConfigError(f"parameter 'rate' must be >= 0; got {cfg['rate']}")

    # ------------------------------------------------------------------ render thread
    def _render_loop(self) -> None:
        stride = int(self.cfg["frame_stride"])
        limit = int(self.cfg["max_frames"])
        rendered = 0
        while not self._stop.is_set() and (limit == 0 or rendered < limit):
            t0 = time.perf_counter()
            try:
                frame = self.renderer.frame(self._next_index)
            except Exception as err:  # a bad schedule value etc.: report, do not spin
                self._render_error = f"{type(err).__name__}: {err}"
                self.get_logger().error(f"rendering frame {self._next_index} failed: {self._render_error}")
                return
            self.render_ms.append((time.perf_counter() - t0) * 1e3)
            del self.render_ms[:-100]
            self._next_index += stride
            rendered += 1
            while not self._stop.is_set():
                try:
                    self._queue.put(frame, timeout=0.1)
                    break
                except queue.Full:
                    continue

    # ------------------------------------------------------------------ publishing
    def _tick(self) -> None:
        limit = int(self.cfg["max_frames"])
        if limit and self.published >= limit:
            if not self.done.is_set():
                self.get_logger().info(f"published {self.published} frames (max_frames): done")
                self.done.set()
            return
        now = self.get_clock().now()
        if now.nanoseconds == 0:  # use_sim_time and no /clock yet: a zero stamp would match nothing
            self.waiting_for_clock += 1
            return
        if not self.started:
            if not self._subscribers_ready():
                return
            self.started = True
            self.get_logger().info(f"{self.image_pub.get_subscription_count()} subscriber(s): publishing")
        try:
            frame = self._queue.get_nowait()
        except queue.Empty:
            self.late_ticks += 1
            return
        self.publish_frame(frame, now.nanoseconds)

    def _subscribers_ready(self) -> bool:
        if self.image_pub.get_subscription_count() < int(self.cfg["wait_for_subscribers"]):
            return False
        need = int(self.cfg["wait_for_truth_subscribers"])
        if need and self.truth_pub is not None and self.truth_pub.get_subscription_count() < need:
            return False
        return not need or self.weather_pub.get_subscription_count() >= need

    def publish_frame(self, frame: Any, stamp_ns: int) -> None:
        """Image, ground truth and weather of one frame, with one stamp."""
        header = Header(frame_id=str(self.cfg["frame_id"]))
        header.stamp.sec, header.stamp.nanosec = stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000
        self.image_pub.publish(rgb_image(header, frame.rgb, self.cfg["encoding"]))
        if self.truth_pub is not None:
            self.truth_pub.publish(mono8_image(header, frame.labels))
        text = weather_json(stamp_to_ns(header.stamp.sec, header.stamp.nanosec), frame.weather, frame.domain,
                            schedule=self.schedule.name, time=frame.time, frame=frame.index,
                            frame_id=header.frame_id)
        self.weather_pub.publish(String(data=text))
        self.weather_latched_pub.publish(String(data=text))
        self.published += 1
        self.last_domain = frame.domain

    def _diagnostics(self) -> None:
        level, message = DiagnosticStatus.OK, f"publishing at {self.rate:g} Hz"
        if self._render_error:
            level, message = DiagnosticStatus.ERROR, f"render failed: {self._render_error}"
        elif self.waiting_for_clock and self.published == 0:
            level, message = DiagnosticStatus.WARN, "waiting for /clock (use_sim_time)"
        elif not self.started:
            level, message = DiagnosticStatus.WARN, "waiting for subscribers"
        elif self.late_ticks:
            level, message = DiagnosticStatus.WARN, f"rendering slower than {self.rate:g} Hz"
        render = sorted(self.render_ms)
        values = {"published": self.published, "late_ticks": self.late_ticks,
                  "waiting_for_clock": self.waiting_for_clock, "rate_hz": f"{self.rate:g}",
                  "render_p50_ms": f"{render[len(render) // 2]:.1f}" if render else "nan",
                  "schedule": self.schedule.name, "domain": getattr(self, "last_domain", ""),
                  "encoding": self.cfg["encoding"], "next_frame": self._next_index}
        status = DiagnosticStatus(level=level, name=f"tta_perception: {self.get_fully_qualified_name()}",
                                  message=message, hardware_id="embedded_world")
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        publish_status(self, self.diag_pub, status)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def _help_text() -> str:
    """``weather_camera --help``: the parameters from ``PARAMS`` (the table that declares them)."""
    return format_help(NODE_NAME, describe(__doc__), table_help(PARAMS), sections=(
        ("topics out", [f"{IMAGE_TOPIC} (sensor_msgs/Image, 'encoding')",
                        f"{TRUTH_TOPIC} (sensor_msgs/Image mono8, 255 = unlabeled; publish_ground_truth)",
                        f"{WEATHER_TOPIC}, {WEATHER_TOPIC}/latest (std_msgs/String JSON; /latest latched)",
                        "/diagnostics (diagnostic_msgs/DiagnosticArray)"]),
        ("clock", ["use_sim_time:=true: the timer and the stamps follow /clock"]),
    ))


def main(args: Optional[list[str]] = None) -> int:
    """``ros2 run tta_perception weather_camera`` (and the launch files); ``-h``/``--help`` prints the
    parameters without initialising rclpy."""
    return spin_node(WeatherCamera, "weather_camera", args, finish=lambda node: node.stop(),
                     help_text=_help_text)

if __name__ == "__main__":
    sys.exit(main())
