"""``weather_camera``: the embedded world as a ROS 2 camera driving through a weather schedule.

Publishes, all with the same header stamp:
- ``camera/image_raw`` (``sensor_msgs/Image``; rgb8, bgr8, rgba8, bgra8 as the CARLA bridge, or mono8),
- ``camera/ground_truth/class_ids`` (mono8 class ids, 255 = unlabeled),
- ``weather`` (``std_msgs/String``, JSON: the stamp, the schedule's ``WeatherParameters`` and domain),
and its health on ``/diagnostics``.

Several cameras of one car (``cameras``, view names of ``world.views``: front, rear, narrow, wide):
each view V publishes ``V/image_raw`` and ``V/ground_truth/class_ids`` (frame_id ``<frame_id>_V``),
all views of a frame with one stamp and one ``weather`` message; they are the same drive under the
same weather at the same instant, each with its own ground truth (``tta_node cameras:=[V, ...]``
reads ``V/image``: remap it to ``V/image_raw``). Rendering cost grows with the views; they are
rendered together on the render thread, so a tick publishes all of a frame's views or none.

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
from rclpy.parameter import Parameter
from std_msgs.msg import Header, String

from ..runtime.diagnostics import status_name
from ..runtime import image_codec as codec
from ..runtime.messages import IMAGE_TOPIC, TRUTH_TOPIC, WEATHER_TOPIC, view_topic, weather_json
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
    "frame_id": ("camera", "header.frame_id of every message (with cameras: <frame_id>_<view>).", {}),
    "cameras": (Parameter.Type.STRING_ARRAY, "Several views of one car (front, rear, narrow, wide): each "
                "publishes <view>/image_raw and <view>/ground_truth/class_ids with the same stamp. Unset or "
                "empty: one camera on camera/image_raw.", {}),
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
        self.cfg["cameras"] = [c for c in (self.cfg.get("cameras") or []) if c]
        self._check(self.cfg)
        from tta_perception.world.schedule import load_schedule
        from tta_perception.world.sequences import SequenceRenderer

        try:
            self.schedule = load_schedule(self.cfg["schedule"])
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"parameter 'schedule': {err}") from None
        seed = None if self.cfg["seed"] < 0 else int(self.cfg["seed"])
        size = (int(self.cfg["height"]), int(self.cfg["width"]))
        self.cameras: list[str] = list(self.cfg["cameras"])
        # one renderer per view; '' is the single legacy camera (the front view)
        self.renderers = {cam: SequenceRenderer(self.schedule, seed, size, view=cam or "front")
                          for cam in (self.cameras or [""])}
        self.renderer = next(iter(self.renderers.values()))
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
        self.image_pubs = {cam: self.create_publisher(Image, view_topic(cam, IMAGE_TOPIC), qos)
                           for cam in self.renderers}
        self.truth_pubs = ({cam: self.create_publisher(Image, view_topic(cam, TRUTH_TOPIC), qos)
                            for cam in self.renderers} if self.cfg["publish_ground_truth"] else {})
        self.image_pub = next(iter(self.image_pubs.values()))
        self.truth_pub = next(iter(self.truth_pubs.values()), None)
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
            f"{'loop' if self.schedule.loop else 'hold'}), "
            f"{'views ' + ','.join(self.cameras) + ', ' if self.cameras else ''}{self.cfg['width']}x{self.cfg['height']} "
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
        from tta_perception.world.views import VIEWS

        unknown = [c for c in cfg["cameras"] if c not in VIEWS]
        if unknown or len(set(cfg["cameras"])) != len(cfg["cameras"]):
            raise ConfigError(f"parameter 'cameras' must name distinct views of {', '.join(VIEWS)}; "
                              f"got {cfg['cameras']}")

    # ------------------------------------------------------------------ render thread
    def _render_loop(self) -> None:
        stride = int(self.cfg["frame_stride"])
        limit = int(self.cfg["max_frames"])
        rendered = 0
        while not self._stop.is_set() and (limit == 0 or rendered < limit):
            t0 = time.perf_counter()
            try:  # every view of the frame, so a tick publishes all of them or none
                frame = {cam: r.frame(self._next_index) for cam, r in self.renderers.items()}
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
        """Every view's image (and, when asked, ground truth) has its subscribers, and the weather."""
        if any(p.get_subscription_count() < int(self.cfg["wait_for_subscribers"]) for p in self.image_pubs.values()):
            return False
        need = int(self.cfg["wait_for_truth_subscribers"])
        if need and any(p.get_subscription_count() < need for p in self.truth_pubs.values()):
            return False
        return not need or self.weather_pub.get_subscription_count() >= need

    def publish_frame(self, frames: Any, stamp_ns: int) -> None:
        """Image and ground truth of every view of one frame and its weather, with one stamp."""
        if not isinstance(frames, dict):
            frames = {next(iter(self.renderers)): frames}
        stamp = Header().stamp
        stamp.sec, stamp.nanosec = stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000
        base = str(self.cfg["frame_id"])
        for cam, frame in frames.items():
            header = Header(stamp=stamp, frame_id=f"{base}_{cam}" if cam else base)
            self.image_pubs[cam].publish(rgb_image(header, frame.rgb, self.cfg["encoding"]))
            if cam in self.truth_pubs:
                self.truth_pubs[cam].publish(mono8_image(header, frame.labels))
        frame = next(iter(frames.values()))
        text = weather_json(stamp_ns, frame.weather, frame.domain, schedule=self.schedule.name, time=frame.time,
                            frame=frame.index, frame_id=base)
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
                  "encoding": self.cfg["encoding"], "next_frame": self._next_index,
                  "cameras": ",".join(self.cameras) or "camera"}
        status = DiagnosticStatus(level=level, name=status_name(self.get_fully_qualified_name()),
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
                        "with cameras: <view>/image_raw and <view>/ground_truth/class_ids per view",
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
