"""``evaluator``: online accuracy / mIoU of the adaptation node(s) per weather phase, from ground truth.

Subscribes to the ground-truth class ids (``camera/ground_truth/class_ids``), the weather JSON
(``weather``) and one or more prediction topics (``prediction_topics``, mono8 class ids as
``tta_node`` publishes them; several topics compare methods on the same frames). Predictions are
matched to ground truth by header stamp (``tta_node`` copies the camera header), scored with the
benchmark's confusion matrix per weather phase (``metrics.StreamScorer``), and the running table is
published on ``~/metrics`` (JSON) and ``/diagnostics``.

At shutdown (and every ``write_period`` seconds, and on ``~/write``) it writes, atomically, into
``output_dir``: ``<prefix>frames.csv`` (per frame: stamp, phase, weather, each method's mIoU and
accuracy), ``<prefix>domains.csv`` and ``<prefix>summary.json`` (per phase and method), and
``<prefix>plot.png`` (mIoU over time with the weather timeline underneath).

Several cameras of one car (``cameras``, e.g. ``[front, rear]``): camera C's ground truth is
``C/ground_truth/class_ids`` and each prediction topic gets C before its last name
(``/loop/dplot/class_ids`` -> ``/loop/dplot/C/class_ids``, where ``tta_node cameras:=[...]``
publishes). Each camera is scored on its own (``<prefix>C_frames.csv``, ...) and every method over
all cameras (the confusion matrices summed); ``<prefix>summary.json``, ``<prefix>domains.csv`` and
``<prefix>plot.png`` then hold the per-camera and overall scores.

Label flicker (``flicker``, on by default; docs/video.md): the evaluator also subscribes to the camera
images (``camera/image_raw``, per camera ``<camera>/image_raw``), runs the same optical flow as the
benchmark on them (``engine.temporal.MotionLog``) and counts, per method and phase, the share of
pixels whose predicted class changes from the method's previous frame along the flow, where the
flow is valid and the ground truth does not change. A frame whose predecessor the method skipped, or
whose image has not arrived when it is scored, is not counted (``flicker_<method>`` in the counts: the
frames that were). Columns ``flicker`` in the summary, the domains CSV and ``~/metrics``.

Quality: the evaluator also subscribes to each prediction topic's ``quality`` (``<ns>/class_ids`` ->
``<ns>/quality``, per camera likewise), ``tta_node``'s label-free estimate of each output's pixel
accuracy, matched by stamp like the predictions, and reports per method how it matches the truth of
the same frames (``metrics.quality.validate``: Spearman with the true pixel accuracy and mIoU per frame
and per 10 frames, the MAE per phase, frames per level): columns ``<method>_quality`` and
``<method>_quality_level`` in ``<prefix>frames.csv``, ``quality`` in ``<prefix>summary.json``, and the
printed table.

Frames a method did not process (``tta_node`` keeps only the newest frame when it is slower than the
camera) are not scored for it; their count is in the summary (``truth`` vs ``scored_<method>``).
"""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from tta_perception.world.carla_labels import palette_to_ids

from ..metrics import CameraScorers, StreamScorer, format_table, recovery_summary
from ..metrics.stream import QUALITY_LEVELS, format_quality
from ..runtime.diagnostics import QUALITY_TOPIC, status_name
from ..runtime.image_codec import DEFAULT_MAX_PIXELS, ImageError
from ..runtime.messages import IMAGE_TOPIC, TRUTH_TOPIC, WEATHER_TOPIC, parse_weather, stamp_to_ns, view_topic
from .convert import labels_of, rgb_of
from .qos import MATCH_PERIOD_S, FollowingSubscription, latched_qos
from .spin import ConfigError, declare_parameters, describe, format_help, publish_status, spin_node, table_help

NODE_NAME = "evaluator"
TRUTH_ENCODINGS = ("class_ids", "carla_palette")

PARAMS: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "prediction_topics": (["class_ids"], "mono8 class-id topics to score (tta_node's 'class_ids'; several "
                          "compare methods on the same frames).", {}),
    "labels": (Parameter.Type.STRING_ARRAY, "A name per prediction topic for tables and plots; unset: from "
               "the topic (its namespace, e.g. /dplot/class_ids -> dplot).", {}),
    "truth_encoding": ("class_ids", "Ground truth on camera/ground_truth/class_ids: 'class_ids' (mono8 ids, as "
                       "weather_camera and make-bag publish) or 'carla_palette' (the carla-ros-bridge semantic "
                       "camera: CityScapes colours in bgra8/rgb8/..., mapped to the 12 classes; tags without a "
                       "counterpart are not scored).", {}),
    "num_classes": (12, "Classes scored (ids >= num_classes and 255 are ignored); 12 = the embedded world.",
                    {"int_range": (1, 255)}),
    "output_dir": ("runs/evaluator", "Folder of the CSV / JSON / PNG files.", {}),
    "prefix": ("", "File name prefix (e.g. 'dynamic_').", {}),
    "title": ("", "Title of the plot.", {}),
    "write_period": (0.0, "Also write the files every N seconds (0: only at shutdown and on ~/write).",
                     {"float_range": (0.0, 3600.0)}),
    "metrics_period": (1.0, "Seconds between ~/metrics and /diagnostics messages.",
                       {"float_range": (0.05, 60.0)}),
    "max_pending": (300, "Frames kept while waiting for their match (bounded memory).",
                    {"int_range": (1, 100000)}),
    "plot": (True, "Write the PNG plot.", {}),
    "flicker": (True, "Also score label flicker % per phase (docs/video.md): subscribes to the camera images "
                "(camera/image_raw, per camera <camera>/image_raw) for the optical flow.", {}),
    "cameras": (Parameter.Type.STRING_ARRAY, "Several cameras: score each on <camera>/ground_truth/class_ids "
                "against its prediction topics with <camera> before their last name, and all of them "
                "together. Unset or empty: one camera on camera/ground_truth/class_ids.", {}),
}


def label_of(topic: str) -> str:
    """/dplot/class_ids -> dplot; class_ids -> class_ids."""
    parts = [p for p in topic.strip("/").split("/") if p]
    if len(parts) >= 2 and parts[-1] == "class_ids":
        return parts[-2]
    return parts[-1] if parts else topic



class Evaluator(Node):
    """See the module docstring."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        declare_parameters(self, PARAMS)
        cfg = {}
        for name in PARAMS:
            try:
                value = self.get_parameter(name).value
            except ParameterUninitializedException:  # a typed array left unset
                value = []
            cfg[name] = list(value) if isinstance(value, (list, tuple)) else value
        if cfg["truth_encoding"] not in TRUTH_ENCODINGS:
            raise ConfigError(f"parameter 'truth_encoding' must be one of {', '.join(TRUTH_ENCODINGS)}, "
                              f"got {cfg['truth_encoding']!r}")
        topics = [t for t in (cfg["prediction_topics"] or []) if t]
        if not topics:
            raise ConfigError("parameter 'prediction_topics' must name at least one topic")
        labels = cfg["labels"] or [label_of(t) for t in topics]
        if len(labels) != len(topics):
            raise ConfigError(f"parameter 'labels' has {len(labels)} names for {len(topics)} prediction topics")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"labels must be unique, got {labels} (set parameter 'labels')")
        self.cfg, self.topics, self.labels = cfg, topics, labels
        self.out_dir = Path(cfg["output_dir"]).expanduser()
        self._lock = threading.Lock()
        self.cameras = [c for c in (cfg["cameras"] or []) if c]
        if len(set(self.cameras)) != len(self.cameras) or any("/" in c for c in self.cameras):
            raise ConfigError(f"parameter 'cameras' must be distinct names without '/', got {self.cameras}")
        # one flow chain per camera for label flicker (lazy import: OpenCV only where it is scored)
        self.motion: dict[str, Any] = {}
        if cfg["flicker"]:
            from ..engine.temporal import MotionLog

            self.motion = {cam: MotionLog() for cam in self.cameras or [""]}
        self.multi = (CameraScorers(self.cameras, labels, int(cfg["num_classes"]), int(cfg["max_pending"]),
                                    videos=self.motion or None) if self.cameras else None)
        self.scorer = (self.multi.scorers[self.cameras[0]] if self.multi else
                       StreamScorer(labels, int(cfg["num_classes"]), max_pending=int(cfg["max_pending"]),
                                    video=self.motion.get("")))
        self.bad_messages = 0
        self.written: dict[str, Path] = {}

        qos = QoSProfile(depth=50, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
        self.create_subscription(String, WEATHER_TOPIC, self._on_weather, qos)
        # the camera's images and ground truth: reliability as the camera publishes them (best_available,
        # as tta_node), so a best-effort camera is heard and a reliable one loses nothing
        self._camera_subs: list[FollowingSubscription] = []
        for cam in self.cameras or [""]:
            self._camera_subs.append(FollowingSubscription(
                self, Image, view_topic(cam, TRUTH_TOPIC), lambda m, info, c=cam: self._on_truth(m, c), depth=50,
                on_change=self._reliability_changed))
            if self.motion:
                self._camera_subs.append(FollowingSubscription(
                    self, Image, view_topic(cam, IMAGE_TOPIC), lambda m, info, c=cam: self._on_image(m, c),
                    depth=50, on_change=self._reliability_changed))
            for topic, label in zip(topics, labels):
                topic = camera_topic(topic, cam)
                self.create_subscription(Image, topic, lambda m, label=label, c=cam: self._on_prediction(label, m, c),
                                         qos)
                # domain memory: the node's detected domain beside its class ids (latched, by change)
                self.create_subscription(String, domain_topic_of(topic),
                                         lambda m, label=label, c=cam: self._on_domain(label, m, c),
                                         latched_qos(depth=50))
                # the node's label-free quality estimate of each output, matched by stamp like the predictions
                self.create_subscription(DiagnosticArray, quality_topic_of(topic),
                                         lambda m, label=label, c=cam: self._on_quality(label, m, c), qos)
        self.metrics_pub = self.create_publisher(String, "~/metrics", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "~/write", self._srv_write)
        self.create_timer(float(cfg["metrics_period"]), self._publish_metrics)
        self.create_timer(MATCH_PERIOD_S, lambda: [sub.check() for sub in self._camera_subs])
        if float(cfg["write_period"]) > 0:
            self.create_timer(float(cfg["write_period"]), lambda: self.write())
        self.get_logger().info(f"scoring {', '.join(f'{lab} ({t})' for lab, t in zip(labels, topics))}"
                               + (f" against <camera>/ground_truth/class_ids of cameras {', '.join(self.cameras)}"
                                  if self.cameras else f" against {self.resolve_topic_name(TRUTH_TOPIC)}")
                               + f"; files in {self.out_dir}")

    def _reliability_changed(self, old: str, new: str, why: str) -> None:
        self.get_logger().info(f"camera topic subscribed {new} (was {old}) to match {why}")

    # ------------------------------------------------------------------ inputs
    def _truth_of(self, msg: Image) -> Optional[np.ndarray]:
        try:
            if self.cfg["truth_encoding"] == "class_ids":
                return labels_of(msg)
            return palette_to_ids(rgb_of(msg, False, DEFAULT_MAX_PIXELS))  # CARLA's semantic camera colours
        except ImageError as err:
            self.bad_messages += 1
            self.get_logger().warning(f"ground truth ({self.cfg['truth_encoding']}): {err}",
                                      throttle_duration_sec=5.0)
            return None

    def _scorer_of(self, camera: str) -> StreamScorer:
        return self.multi.scorers[camera] if camera else self.scorer

    def _on_truth(self, msg: Image, camera: str = "") -> None:
        labels = self._truth_of(msg)
        if labels is None:
            return
        with self._lock:
            scorer = self._scorer_of(camera)
            scorer.add_truth(stamp_to_ns(msg.header.stamp.sec, msg.header.stamp.nanosec), labels)
            scorer.process()

    def _on_image(self, msg: Image, camera: str = "") -> None:
        """A camera frame: the flow into it from the previous one (label flicker)."""
        try:
            rgb = rgb_of(msg, False, DEFAULT_MAX_PIXELS)
        except ImageError as err:
            self.bad_messages += 1
            self.get_logger().warning(f"camera image: {err}", throttle_duration_sec=5.0)
            return
        stamp = stamp_to_ns(msg.header.stamp.sec, msg.header.stamp.nanosec)
        motion = self.motion[camera]
        with self._lock:  # the scorer reads the log under the same lock
            motion.add(stamp, rgb)

    def _on_weather(self, msg: String) -> None:
        try:
            stamp, payload = parse_weather(msg.data)
        except ValueError as err:
            self.bad_messages += 1
            self.get_logger().warning(f"ignored weather message: {err}", throttle_duration_sec=5.0)
            return
        with self._lock:
            target = self.multi or self.scorer
            target.add_weather(stamp, payload)
            target.process()

    def _on_domain(self, label: str, msg: String, camera: str = "") -> None:
        try:
            data = json.loads(msg.data)
            stamp = stamp_to_ns(data["stamp"]["sec"], data["stamp"]["nanosec"])
            domain = int(data["id"])
        except (ValueError, KeyError, TypeError) as err:
            self.bad_messages += 1
            self.get_logger().warning(f"ignored domain message on {label}: {err}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self._scorer_of(camera).add_detected(label, stamp, domain)

    def _on_quality(self, label: str, msg: DiagnosticArray, camera: str = "") -> None:
        """A frame's quality (``tta_node``'s 'quality'): its estimate and level, scored against the
        truth of the frame with its stamp."""
        try:
            values = {kv.key: kv.value for kv in msg.status[0].values}
            estimate = float(values["estimate"])
            level = QUALITY_LEVELS.index(values["level"])
        except (IndexError, KeyError, ValueError) as err:
            self.bad_messages += 1
            self.get_logger().warning(f"ignored quality message on {label}: {type(err).__name__}: {err}",
                                      throttle_duration_sec=5.0)
            return
        with self._lock:
            self._scorer_of(camera).add_quality(label, stamp_to_ns(msg.header.stamp.sec, msg.header.stamp.nanosec),
                                                estimate, level)

    def quality(self) -> dict[str, Any]:
        """Per method that sends quality estimates: their validation against the truth (per camera and
        overall with several cameras)."""
        with self._lock:
            return (self.multi or self.scorer).quality()

    def _on_prediction(self, label: str, msg: Image, camera: str = "") -> None:
        try:
            ids = labels_of(msg)
        except ImageError as err:
            self.bad_messages += 1
            self.get_logger().warning(f"prediction on {label}: {err}", throttle_duration_sec=5.0)
            return
        with self._lock:
            scorer = self._scorer_of(camera)
            scorer.add_prediction(label, stamp_to_ns(msg.header.stamp.sec, msg.header.stamp.nanosec), ids)
            scorer.process()

    # ------------------------------------------------------------------ outputs
    def status(self) -> dict[str, Any]:
        """The running scores; with cameras the table's columns are ``<camera>/<label>`` and
        ``overall/<label>``, and the counts are summed over the cameras."""
        with self._lock:
            if self.multi is None:
                return self.scorer.status()
            tables = self.multi.tables()
            counts: dict[str, int] = {}
            for cam, scorer in self.multi.scorers.items():
                for k, v in scorer.counts.items():
                    counts[k] = counts.get(k, 0) + int(v)
                    if k.startswith("scored_"):
                        counts[f"scored_{cam}/{k[7:]}"] = int(v)
            counts.update({f"scored_overall/{m}": counts.get(f"scored_{m}", 0) for m in self.labels})
            return {"methods": self.labels, "cameras": self.cameras, "current_domain": self.scorer.current_domain,
                    "table": {f"{c}/{m}": per for m, t in tables.items() for c, per in t.items()},
                    "counts": counts}

    def table(self) -> dict[str, Any]:
        """Per method: {domain: scores}; with cameras, the overall scores of each method."""
        with self._lock:
            if self.multi is None:
                return self.scorer.table()
            return {m: t["overall"] for m, t in self.multi.tables().items()}

    def camera_tables(self) -> dict[str, Any]:
        """With cameras: {method: {camera | 'overall': {domain: scores}}} (``CameraScorers.tables``)."""
        with self._lock:
            return self.multi.tables() if self.multi is not None else {}

    def _publish_metrics(self) -> None:
        st = self.status()
        st["stamp"] = self.get_clock().now().nanoseconds
        st["bad_messages"] = self.bad_messages
        self.metrics_pub.publish(String(data=json.dumps(st, default=float)))
        values = [KeyValue(key="current_domain", value=st["current_domain"]),
                  KeyValue(key="truth_frames", value=str(st["counts"].get("truth", 0))),
                  KeyValue(key="bad_messages", value=str(self.bad_messages))]
        for label, per in st["table"].items():
            values.append(KeyValue(key=f"{label}/frames", value=str(st["counts"].get(f"scored_{label}", 0))))
            for domain, v in per.items():
                values.append(KeyValue(key=f"{label}/{domain}/miou", value=f"{v['miou']:.2f}"))
                values.append(KeyValue(key=f"{label}/{domain}/acc", value=f"{v['acc']:.2f}"))
                if "flicker" in v:
                    values.append(KeyValue(key=f"{label}/{domain}/flicker", value=f"{v['flicker']:.2f}"))
        scored = any(st["counts"].get(f"scored_{label}", 0) for label in self.labels)  # summed over cameras
        status = DiagnosticStatus(level=DiagnosticStatus.OK if scored else DiagnosticStatus.WARN,
                                  name=status_name(self.get_fully_qualified_name()),
                                  message=("scoring, phase " + st["current_domain"]) if scored
                                  else "waiting for ground truth and predictions", hardware_id="evaluator")
        status.values = values
        publish_status(self, self.diag_pub, status)

    def write(self) -> dict[str, Path]:
        """The CSV / JSON / PNG files now (atomic; the last complete set stays if this fails)."""
        with self._lock:
            try:
                self.written = (self.multi or self.scorer).write(self.out_dir, prefix=self.cfg["prefix"],
                                                                 plot=bool(self.cfg["plot"]), title=self.cfg["title"])
            except Exception as err:  # disk full, bad folder: report, keep scoring
                self.get_logger().error(f"writing results to {self.out_dir} failed: {type(err).__name__}: {err}")
        return self.written

    def _srv_write(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        written = self.write()
        response.success = bool(written)
        response.message = ", ".join(str(p) for p in written.values()) if written else "nothing written"
        return response

    def summary_text(self) -> str:
        if self.multi is not None:
            with self._lock:
                return self.multi.text()
        table = self.table()
        lines = [format_table(table)]
        if self.motion:
            lines.append("label flicker % (lower = steadier; docs/video.md)\n" + format_table(table, "flicker"))
        quality = self.quality()
        if quality:
            lines.append(format_quality(quality))
        for m, changes in self.scorer.recovery().items():
            t = recovery_summary([c["frames"] for c in changes])
            if t["changes"]:
                lines.append(f"{m}: time to recover after {t['changes']} weather changes: "
                             + (f"{t['mean_frames']:.1f} frames on average over the {t['recovered']} recovered"
                                if t["recovered"] else "none recovered")
                             + " (meaningful for instant switches, e.g. schedule dynamic_abrupt)")
        return "\n".join(lines)


def camera_topic(topic: str, camera: str) -> str:
    """Camera ``front`` of a per-camera topic: ``/loop/dplot/class_ids`` -> ``/loop/dplot/front/class_ids``,
    ``class_ids`` -> ``front/class_ids`` (where ``tta_node cameras:=[front, ...]`` publishes)."""
    if not camera:
        return topic
    head, _, tail = topic.rstrip("/").rpartition("/")
    return f"{head}/{camera}/{tail}" if (head or topic.startswith("/")) else f"{camera}/{tail}"


def quality_topic_of(prediction_topic: str) -> str:
    """``<ns>/class_ids`` -> ``<ns>/quality``, where ``tta_node`` publishes each output's quality."""
    head, _, tail = prediction_topic.rstrip("/").rpartition("/")
    return (f"{head}/{QUALITY_TOPIC}" if head else QUALITY_TOPIC) if tail == "class_ids" else \
        f"{prediction_topic.rstrip('/')}_{QUALITY_TOPIC}"


def domain_topic_of(prediction_topic: str) -> str:
    """``<ns>/class_ids`` -> ``<ns>/domain``, where ``tta_node`` publishes its detected domain."""
    head, _, tail = prediction_topic.rstrip("/").rpartition("/")
    return f"{head}/domain" if tail == "class_ids" else f"{prediction_topic.rstrip('/')}_domain"


def _finish(node: "Evaluator") -> None:
    written = node.write()
    print(node.summary_text(), file=sys.stderr)
    if written:
        print("[evaluator] wrote " + ", ".join(str(p) for p in written.values()), file=sys.stderr)


def _help_text() -> str:
    """``evaluator --help``: the parameters from ``PARAMS`` (the table that declares them)."""
    return format_help(NODE_NAME, describe(__doc__), table_help(PARAMS), sections=(
        ("topics in", [f"{TRUTH_TOPIC} (sensor_msgs/Image; truth_encoding); with cameras: "
                       "<camera>/ground_truth/class_ids",
                       f"{WEATHER_TOPIC} (std_msgs/String JSON)",
                       "each of prediction_topics (sensor_msgs/Image mono8 class ids), its "
                       "<namespace>/domain (std_msgs/String JSON, latched) and <namespace>/quality "
                       "(diagnostic_msgs/DiagnosticArray: tta_node's quality estimate, validated against the truth)"]),
        ("topics out", ["~/metrics (std_msgs/String JSON)", "/diagnostics (diagnostic_msgs/DiagnosticArray)"]),
        ("services", ["~/write (std_srvs/Trigger): write the CSV / JSON / PNG files now"]),
        ("files", ["<output_dir>/<prefix>frames.csv, domains.csv, summary.json, plot.png (at shutdown, "
                   "every write_period and on ~/write)"]),
    ))


def main(args: Optional[list[str]] = None) -> int:
    """``ros2 run tta_perception evaluator``; writes its files on Ctrl-C / launch shutdown; ``-h``/``--help``
    prints the parameters without initialising rclpy."""
    return spin_node(Evaluator, "evaluator", args, finish=_finish, help_text=_help_text)

if __name__ == "__main__":
    sys.exit(main())
