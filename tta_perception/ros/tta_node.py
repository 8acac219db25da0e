"""``tta_node``: a managed (lifecycle) ROS 2 node that adapts a camera model online, without labels.

Thin on purpose, as yolo_ros: the ROS-free ``runtime.session.Session`` holds the configuration, the
pipeline (the engine's ``StreamingAdapter``, the same code the benchmark runs), reloads, services and
diagnostics; ``ros.convert`` turns messages into arrays and results into messages. This module only
declares the parameters and wires topics, services, lifecycle transitions and /diagnostics.

Threads: the executor thread only stores the newest frame of each camera
(``runtime.frames.FrameWorker``); the worker thread decodes, infers (the newest frame of every camera
with one, in one batch) and publishes; adaptation, reloads and ``~/save`` run on their own threads.

Several cameras (``cameras``): one subscription and one set of outputs per camera under its name, one
model; the names are fixed at start-up.
"""
from __future__ import annotations

import array
import json
import math
import sys
import threading
import time
from typing import Any, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.exceptions import (InvalidParameterTypeException, InvalidParameterValueException,
                              ParameterUninitializedException)
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String
from std_srvs.srv import SetBool, Trigger

from ..atomic import remove_orphans
from ..runtime import diagnostics as D
from ..runtime import image_codec as codec
from ..runtime import params as P
from ..runtime.errors import one_line
from ..runtime.frames import FrameWorker
from ..runtime.memory import keep_freed_memory
from ..runtime.session import Session
from . import convert
from .qos import MATCH_PERIOD_S, FollowingSubscription, latched_qos, output_qos, service_qos, transport_source
from .spin import (ParamHelp, describe, format_help, help_requested, ignore_further_signals, init_rclpy,
                   print_help)

NODE_NAME = "tta_node"
_PARAM_TYPES = {
    "str": ParameterType.PARAMETER_STRING, "bool": ParameterType.PARAMETER_BOOL,
    "int": ParameterType.PARAMETER_INTEGER, "float": ParameterType.PARAMETER_DOUBLE,
    "int_array": ParameterType.PARAMETER_INTEGER_ARRAY,
    "str_array": ParameterType.PARAMETER_STRING_ARRAY,
}
_TYPES = {"str": Parameter.Type.STRING, "bool": Parameter.Type.BOOL, "int": Parameter.Type.INTEGER,
          "float": Parameter.Type.DOUBLE, "int_array": Parameter.Type.INTEGER_ARRAY,
          "str_array": Parameter.Type.STRING_ARRAY}
_LEVELS = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN, "error": DiagnosticStatus.ERROR}


def _vision_msgs():
    """vision_msgs where installed (a ROS distro); None with the PyPI wheels."""
    try:
        from vision_msgs import msg as vm

        return vm
    except ImportError:
        return None


class _Log:
    """The session's log lines through the node's logger (repeated warnings throttled to one per 5 s).

    rclpy keys a log call's filters by its call site and raises if one site is called with other
    filters later ("Requested logging filters cannot be changed between calls"): throttled and plain
    lines therefore go through separate calls."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def info(self, message: str) -> None:
        self._logger.info(message)

    def warning(self, message: str, throttle: bool = False) -> None:
        if throttle:
            self._logger.warning(message, throttle_duration_sec=5.0)
        else:
            self._logger.warning(message)

    def error(self, message: str, throttle: bool = False) -> None:
        if throttle:
            self._logger.error(message, throttle_duration_sec=5.0)
        else:
            self._logger.error(message)


class TTANode(LifecycleNode):
    """See the module docstring; parameters are listed in ``tta_perception.runtime.params.SPECS``."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._image_subs: list[FollowingSubscription] = []
        self._match_timer: Any = None
        self._worker: Optional[FrameWorker] = None
        self._pubs: dict[str, Any] = {}
        self._last_bad_total = 0
        self._camera_bad: dict[str, int] = {}
        self._last_domain: dict[str, int] = {}  # per camera
        self._vm = _vision_msgs()

        self._rollback_thread: Optional[int] = None  # the thread putting rolled-back values back
        self._accepted: dict[str, Any] = {}  # the last values the set callback accepted
        self._startup_errors = self._declare_parameters()
        self.session = Session({s.name: self._read(s.name) for s in P.SPECS}, _Log(self.get_logger()),
                               on_swap=self._on_swap, on_rollback=self._on_rollback,
                               node_name=self.get_name())
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(float(self.session.cfg["diagnostics_period"]),
                                             self._publish_diagnostics)
        # deep request/response queues: a burst of calls is answered, not dropped by DDS
        self.create_service(SetBool, "~/enable", self._srv_enable, qos_profile=service_qos())
        self.create_service(Trigger, "~/reset", self._srv_reset, qos_profile=service_qos())
        # reentrant: the executor takes further calls (and frames) while a save awaits its thread
        self.create_service(Trigger, "~/save", self._srv_save, qos_profile=service_qos(),
                            callback_group=ReentrantCallbackGroup())

    @property
    def _pipeline(self):
        """The pipeline running now (None while unconfigured or inactive)."""
        return self.session.pipeline

    # ================================================================== parameters
    def _declare_parameters(self) -> list[str]:
        """Declare every parameter with its description and range; collect (not raise) bad start-up
        values so configure can refuse them with one clear line."""
        errors = []
        for spec in P.SPECS:
            desc = ParameterDescriptor(name=spec.name, type=_PARAM_TYPES[spec.type],
                                       description=spec.description, read_only=spec.read_only)
            notes = [f"changes: {spec.when}"]
            if spec.choices:
                notes.append("one of " + ", ".join(spec.choices))
            if spec.range and spec.type.endswith("array"):
                notes.append(f"items in [{spec.range[0]}, {spec.range[1]}]")
            desc.additional_constraints = "; ".join(notes)
            if spec.range and spec.type == "int":
                desc.integer_range = [IntegerRange(from_value=int(spec.range[0]),
                                                   to_value=int(spec.range[1]), step=0)]
            if spec.range and spec.type == "float":
                desc.floating_point_range = [FloatingPointRange(
                    from_value=float(spec.range[0]), to_value=float(spec.range[1]), step=0.0)]
            default: Any = spec.default
            if spec.type == "str_array" and not spec.default:
                default = Parameter.Type.STRING_ARRAY  # typed but unset: an empty list cannot be typed
            try:
                self.declare_parameter(spec.name, default, desc)
            except (InvalidParameterValueException, InvalidParameterTypeException) as err:
                errors.append(f"parameter {spec.name!r}: {one_line(err)}")
                self.declare_parameter(spec.name, default, desc, ignore_override=True)
        return errors

    def _read(self, name: str) -> Any:
        try:
            value = self.get_parameter(name).value
        except ParameterUninitializedException:
            value = None
        if value is None and P.SPEC[name].type.endswith("array"):
            return []
        return list(value) if isinstance(value, (list, tuple, array.array)) else value

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """A transaction: validate every value (the message names the parameter and what it allows)
        and what can be told against the running model, then apply all or nothing."""
        updates: dict[str, Any] = {}
        for p in params:
            if p.name not in P.SPEC:
                continue
            value = p.value
            if isinstance(value, (tuple, array.array)):
                value = list(value)
            if value is None and P.SPEC[p.name].type.endswith("array"):
                value = []
            updates[p.name] = value
        if self._rollback_thread == threading.get_ident():  # the session holds these values already
            return SetParametersResult(successful=True)
        reason = self.session.check_updates(updates)
        if reason:
            self.get_logger().warning(f"rejected: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        self._accepted = updates  # rclpy stores them after this returns (see _on_rollback)
        if "subscription" in self.session.update(updates) and self._worker is not None:
            self._subscribe()
        if "quality" in updates:
            self._sync_quality_publishers()  # the quality outputs come or go; the others stay
        return SetParametersResult(successful=True)

    def _on_rollback(self, values: dict[str, Any]) -> None:
        """A failed reload put ``values`` back in the session: the parameters follow. rclpy stores
        accepted values only after the set callback returns, and a reload can fail before that (user
        code that exits at once): wait, briefly, until the accepted values are stored, or they would
        overwrite the rollback and the parameters would show a configuration that does not run."""
        accepted = self._accepted
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and any(
                k in accepted and self._read(k) != accepted[k] for k in values):
            time.sleep(0.005)
        params = [Parameter(k, _TYPES[P.SPEC[k].type], v) for k, v in values.items()]
        self._rollback_thread = threading.get_ident()
        try:
            self.set_parameters(params)
        finally:
            self._rollback_thread = None

    # ================================================================== lifecycle
    def start(self) -> None:
        """Autostart (default): configure and activate by themselves, as yolo_ros does."""
        if not self.session.cfg["autostart"]:
            self.get_logger().info("autostart is false: waiting for lifecycle transitions")
            return
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        removed = remove_orphans(self._orphan_dir())  # left by a process killed during a save
        if removed:
            self.get_logger().info(f"removed {len(removed)} unfinished save(s) of killed processes: "
                                   + ", ".join(p.name for p in removed))
        error = self.session.configure(self._startup_errors)
        if error:
            self.get_logger().error(f"configure refused: {error}")
            return TransitionCallbackReturn.FAILURE
        self._make_publishers(self.session.pipeline)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        had_model = self.session.pipeline is not None
        error = self.session.activate()
        if error:
            self.get_logger().error(f"activate refused: {error}")
            return TransitionCallbackReturn.FAILURE
        pipe = self.session.pipeline
        if not had_model and (not self._pubs or self.session.last_task != (pipe.task, pipe.class_names)):
            self._make_publishers(pipe)
        self._sync_quality_publishers()  # 'quality' may have changed while inactive
        self._worker = FrameWorker(self._process, self.session.frame_failed, cameras=self._cameras)
        self._subscribe()
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop processing and free the model (GPU memory); the adapted state is kept on the CPU."""
        self._stop_processing()
        self.session.deactivate()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._free()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._free("finalized")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._free()
        return TransitionCallbackReturn.SUCCESS

    def _stop_processing(self) -> None:
        """Unsubscribe and stop the worker (idempotent)."""
        self._unsubscribe()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    def _free(self, state: str = "unconfigured") -> None:
        """Drop the model, its parked state and the publishers (idempotent)."""
        self.session.cleanup(state)
        pubs, self._pubs = self._pubs, {}
        for pub in pubs.values():
            self.destroy_publisher(pub)

    def _on_swap(self, new: Any, old: Optional[Any]) -> None:
        if old is None or old.task != new.task or old.class_names != new.class_names:
            self._make_publishers(new)

    # ================================================================== topics
    @property
    def _cameras(self) -> list[str]:
        """The cameras' names ('' for the single camera on ``image``)."""
        return self.session.cameras or [""]

    @staticmethod
    def _topic(camera: str, name: str) -> str:
        return f"{camera}/{name}" if camera else name

    def _make_publishers(self, pipe: Any) -> None:
        """Create the outputs of ``pipe``'s task, under ``C/`` for each camera C (the class names and
        ``label_info`` once per node); the old set is destroyed only after the swap so the worker
        never publishes on a destroyed publisher."""
        old, out, pubs = self._pubs, output_qos(), {}
        for cam in self._cameras:
            topic = lambda name: self._topic(cam, name)  # noqa: E731
            if pipe.task == "segmentation":
                for name in ("class_ids", "confidence", "confidence_float", "overlay"):
                    pubs[topic(name)] = self.create_publisher(Image, topic(name), out)
            else:
                pubs[topic("classification_json")] = self.create_publisher(String, topic("classification_json"), out)
                if self._vm is not None:
                    pubs[topic("classification")] = self.create_publisher(self._vm.Classification,
                                                                          topic("classification"), out)
            pubs[topic("domain")] = self.create_publisher(String, topic("domain"), latched_qos())
            if self.session.cfg["quality"]:  # the quality of each answered frame, with its header
                pubs[topic(D.QUALITY_TOPIC)] = self.create_publisher(DiagnosticArray, topic(D.QUALITY_TOPIC), out)
        pubs["class_names"] = self.create_publisher(String, "class_names", latched_qos())
        if self._vm is not None and hasattr(self._vm, "LabelInfo"):
            pubs["label_info"] = self.create_publisher(self._vm.LabelInfo, "label_info", latched_qos())
        self._pubs = pubs
        for pub in old.values():
            self.destroy_publisher(pub)
        payload = {"task": pipe.task, "class_names": pipe.class_names,
                   "colors": pipe.palette[:len(pipe.class_names)].tolist(), "unlabeled": 255}
        pubs["class_names"].publish(String(data=json.dumps(payload)))
        if "label_info" in pubs:
            pubs["label_info"].publish(convert.label_info(pipe.class_names, self.get_clock().now().to_msg(),
                                                          self._vm))

    def _sync_quality_publishers(self) -> None:
        """Add or remove each camera's ``quality`` publisher to follow the ``quality`` parameter; the
        other outputs (and the latched ``domain`` / ``class_names``) are left alone. Nothing before the
        publishers exist (configure creates them from the parameters)."""
        if not self._pubs:
            return
        want = bool(self.session.cfg["quality"])
        pubs, gone = dict(self._pubs), []
        for cam in self._cameras:
            name = self._topic(cam, D.QUALITY_TOPIC)
            if want and name not in pubs:
                pubs[name] = self.create_publisher(DiagnosticArray, name, output_qos())
            elif not want and name in pubs:
                gone.append(pubs.pop(name))
        if pubs.keys() != self._pubs.keys():
            self._pubs = pubs  # swapped whole: the worker sees the old set or the new one
            for pub in gone:
                self.destroy_publisher(pub)

    def _subscribe(self) -> None:
        self._unsubscribe()
        cfg = self.session.effective_cfg()
        for cam in self._cameras:
            if cfg["compressed"]:
                topic, msg_type, compressed = self._topic(cam, "image/compressed"), CompressedImage, True
            else:
                topic, msg_type, compressed = self._topic(cam, "image"), Image, False
            sub = FollowingSubscription(
                self, msg_type, topic, lambda m, info, c=cam, z=compressed: self._on_frame(m, z, c, info),
                cfg["qos_reliability"], cfg["qos_depth"],
                on_change=lambda old, new, why, c=cam: self._reliability_changed(c, old, new, why))
            self._image_subs.append(sub)
            self.session.subscribed_reliability[cam] = sub.reliability
        self.get_logger().info(f"listening on {', '.join(s.topic_name for s in self._image_subs)} "
                               f"({self._reliability_text(cfg['qos_reliability'])}, depth {cfg['qos_depth']})")
        if cfg["qos_reliability"] == "best_available":
            self._match_timer = self.create_timer(MATCH_PERIOD_S, self._follow_publishers)

    def _unsubscribe(self) -> None:
        timer, self._match_timer = self._match_timer, None
        if timer is not None:
            self.destroy_timer(timer)
        subs, self._image_subs = self._image_subs, []
        for sub in subs:
            sub.destroy()

    def _reliability_text(self, setting: str) -> str:
        """``best_available`` with what it resolved to, per camera where several."""
        if setting != "best_available":
            return setting
        now = sorted({s.reliability for s in self._image_subs})
        return f"best_available: {'/'.join(now)}" + ("" if any(s.publisher_count() for s in self._image_subs)
                                                      else " until a publisher is seen")

    def _follow_publishers(self) -> None:
        """Timer: each image subscription follows its publishers' reliability (``best_available``)."""
        for sub in list(self._image_subs):
            try:
                sub.check()
            except Exception as err:  # noqa: BLE001 - a graph query during shutdown; the next tick retries
                self.get_logger().warning(f"matching the image subscription's QoS: {one_line(err)}",
                                          throttle_duration_sec=5.0)

    def _reliability_changed(self, camera: str, old: str, new: str, why: str) -> None:
        self.session.subscribed_reliability[camera] = new
        self.session.count("qos_rematches", camera)
        topic = self._topic(camera, "image/compressed" if self.session.cfg["compressed"] else "image")
        self.get_logger().info(f"{topic}: subscribed {new} (was {old}) to match {why}")

    def _on_frame(self, msg: Any, compressed: bool, camera: str = "", info: Optional[dict] = None) -> None:
        """Executor thread: O(1), only keeps the newest frame of each camera (the previous
        unprocessed one of that camera is dropped). Never raises: an exception here would end the
        executor's spin and the node. ``info``: the message info (publisher, sequence number) where
        rclpy gives it; frames lost before the node are counted per publisher."""
        import time

        try:
            stamp = msg.header.stamp
            source, seq = transport_source(msg, info)
            self.session.arrival(stamp.sec + stamp.nanosec * 1e-9, camera, source=source, seq=seq)
            worker = self._worker
            if worker is not None and worker.put((msg, compressed, time.monotonic()), camera):
                self.session.count("frames_dropped", camera)
        except Exception as err:  # noqa: BLE001 - counted and logged, the node goes on
            self.session.frame_failed(err)

    # ================================================================== worker
    def _process(self, items: list[tuple[str, tuple[Any, bool, float]]]) -> None:
        """The newest frame of every camera with one: decoded one by one (a bad frame only costs its
        camera), predicted in one batch, published per camera."""
        cfg = self.session.cfg
        frames = []
        for cam, (msg, compressed, t_arrival) in items:
            try:
                frames.append((cam, msg, t_arrival, convert.rgb_of(msg, compressed, cfg["max_image_pixels"])))
            except codec.ImageError as err:
                self.session.rejected(err, cam)
        if not frames:
            return
        cams = [f[0] for f in frames]
        listened = lambda name: [self._listened(self._topic(c, name)) for c in cams]  # noqa: E731
        stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m, _, _ in frames]
        done = self.session.infer_batch(
            [f[3] for f in frames], cams, stamps, output_size=cfg["output_size"], top_k=cfg["top_k"],
            overlay_alpha=cfg["overlay_alpha"],
            overlay=[cfg["publish_overlay"] and v for v in listened("overlay")],
            confidence=[cfg["publish_confidence"] and v for v in listened("confidence")],
            confidence_float=cfg["publish_confidence_float"] and any(listened("confidence_float")))
        if done is None:
            return
        results, pipe, model_s = done
        for (cam, msg, t_arrival, _), result in zip(frames, results):
            self._publish(result, msg.header, pipe, cfg, cam)
            self._publish_domain(pipe, msg.header, cam)
            self._publish_quality(result, msg.header, pipe, cam)
            self.session.done(result, t_arrival, model_s, cam)

    def _publish_quality(self, result: Any, header: Header, pipe: Any, camera: str = "") -> None:
        """The frame's quality on ``quality`` (``C/quality``): one DiagnosticStatus under the input's header."""
        name = self._topic(camera, D.QUALITY_TOPIC)
        pub = self._pubs.get(name)
        if pub is None or result.quality is None or not self._listened(name):
            return  # built only for a subscriber (the estimate itself still feeds /diagnostics)
        status = D.quality_status(self.get_fully_qualified_name(), camera, header.frame_id, result.quality,
                                  pipe.quality_calibration)
        try:
            pub.publish(convert.quality_message(header, status))
        except Exception:  # noqa: BLE001
            if self._pubs.get(name) is pub:  # not a publisher that 'quality:=false' just destroyed
                raise

    def _publish_domain(self, pipe: Any, header: Header, camera: str = "") -> None:
        """Domain memory: the domain on ``domain`` (latched JSON, under each camera), published when
        it changes."""
        info = pipe.domain()
        topic = self._topic(camera, "domain")
        if info is None or info["id"] == self._last_domain.get(camera) or topic not in self._pubs:
            return
        self._last_domain[camera] = info["id"]
        payload = {"stamp": {"sec": header.stamp.sec, "nanosec": header.stamp.nanosec},
                   "frame_id": header.frame_id, **info}
        self._pubs[topic].publish(String(data=json.dumps(payload)))

    def _listened(self, name: str) -> bool:
        """Whether an optional output has a subscriber: maps nobody reads are not computed (as
        image_transport's lazy publishers), which keeps the per-frame cost to what is used."""
        pub = self._pubs.get(name)
        try:
            return pub is not None and pub.get_subscription_count() > 0
        except Exception:  # a publisher being destroyed by a reload: compute as asked
            return True

    def _publish(self, result: Any, header_in: Header, pipe: Any, cfg: dict[str, Any], camera: str = "") -> None:
        pubs = self._pubs
        header = Header(stamp=header_in.stamp, frame_id=header_in.frame_id)
        if result.task == "segmentation":
            if self._topic(camera, "class_ids") not in pubs:
                return
            msgs = convert.segmentation_messages(result, header, confidence=cfg["publish_confidence"],
                                                 overlay=cfg["publish_overlay"])
        else:
            if self._topic(camera, "classification_json") not in pubs:
                return
            msgs = convert.classification_messages(result, pipe.class_names, header,
                                                   self._vm if self._topic(camera, "classification") in pubs
                                                   else None)
        for name, out in msgs.items():
            pubs[self._topic(camera, name)].publish(out)

    # ================================================================== services
    def _srv_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        result = self.set_parameters([Parameter("enable", Parameter.Type.BOOL, bool(request.data))])[0]
        response.success = bool(result.successful)
        response.message = (f"adaptation {'enabled' if request.data else 'disabled'}"
                            if result.successful else result.reason)
        return response

    def _srv_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.session.reset()
        return response

    def _orphan_dir(self):
        """Where unfinished saves of killed processes may lie: the directory of ``save_path``
        (inside ``state_dir``), else ``state_dir`` itself."""
        try:
            return self.session.save_path().parent
        except ValueError:
            return self.session.state_dir

    async def _srv_save(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """The save runs on its own thread while the executor goes on (frames, other calls); calls
        made while it runs share its result."""
        from rclpy.task import Future

        done = Future(executor=self.executor)
        done.add_done_callback(lambda _: None)  # its completion wakes the executor to resume us
        self.session.request_save().add_done_callback(lambda f: done.set_result(f.result()))
        response.success, response.message = await done
        return response

    # ================================================================== diagnostics
    def diagnostics(self) -> dict[str, Any]:
        """Everything /diagnostics reports, as a dict (also handy in tests and tools)."""
        return self.session.diagnostics()

    def _publish_diagnostics(self) -> None:
        level, message, self._last_bad_total, values = self.session.status(self._last_bad_total)
        values[D.INPUT_PUBLISHERS] = self._input_publishers()
        values[D.INPUT_RELIABILITY] = ",".join(sorted({s.reliability for s in self._image_subs}))
        status = DiagnosticStatus(level=_LEVELS[level], name=D.status_name(self.get_fully_qualified_name()),
                                  message=message, hardware_id=str(values[D.DEVICE]))
        status.values = [KeyValue(key=k, value=D.text(v)) for k, v in values.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [status] + self._camera_statuses(values)
        self._diag_pub.publish(arr)

    def _input_publishers(self) -> int:
        """Publishers matched on the image subscriptions (0: nothing is sending, or discovery is not
        done: a restarted node's first frames of a best-effort stream are lost until it is)."""
        total = 0
        for sub in list(self._image_subs):
            try:
                total += sub.publisher_count()
            except Exception:  # noqa: BLE001 - a subscription being destroyed by a re-subscribe
                pass
        return total

    def _camera_statuses(self, node_values: dict[str, Any]) -> list[DiagnosticStatus]:
        """One status per camera (several cameras only): warn while it is silent (no frame for 2 s,
        or none yet) or sends frames the node cannot decode."""
        out = []
        for cam, row in self.session.camera_diagnostics().items():
            bad = sum(int(row[r]) for r in codec.REASONS)
            age = row["last_frame_age_s"]
            level, message = DiagnosticStatus.OK, f"{row['input_rate_hz']:.1f} Hz in, p50 {row['latency_p50_ms']:.0f} ms"
            if math.isnan(age) or age > 2.0:
                level, message = DiagnosticStatus.WARN, ("no frame yet" if math.isnan(age) else f"no frame for {age:.0f} s")
            elif bad > self._camera_bad.get(cam, 0):
                level, message = DiagnosticStatus.WARN, "bad frames received (see counters)"
            self._camera_bad[cam] = bad
            alarm = self.session.report.quality_alarm(cam)  # the camera's outputs are judged poor
            if alarm is not None and _LEVELS[alarm[0]] > level:
                level, message = _LEVELS[alarm[0]], f"{alarm[1]}; {message}"
            status = DiagnosticStatus(level=level, message=message, hardware_id=str(node_values[D.DEVICE]),
                                      name=D.camera_status_name(self.get_fully_qualified_name(), cam))
            status.values = [KeyValue(key="camera", value=cam)] + [KeyValue(key=k, value=D.text(v)) for k, v in row.items()]
            out.append(status)
        return out


def _param_help(spec: "P.Spec") -> ParamHelp:
    return ParamHelp(spec.name, spec.type, spec.default, spec.when + (", read-only" if spec.read_only else ""),
                     spec.description, P.allowed(spec))


#: what --help lists besides the parameters (the node's create_* calls in TTANode are the source)
_HELP_SECTIONS = (
    ("topics in", ["image (sensor_msgs/Image), or image/compressed (sensor_msgs/CompressedImage) with "
                   "compressed:=true"]),
    ("topics out", ["segmentation: class_ids (mono8), confidence (mono8), confidence_float (32FC1), "
                    "overlay (rgb8) (sensor_msgs/Image)",
                    "classification: classification_json (std_msgs/String), classification "
                    "(vision_msgs/Classification, where installed)",
                    "class_names, domain (std_msgs/String JSON, latched); label_info (vision_msgs/LabelInfo, "
                    "where installed)",
                    "quality (diagnostic_msgs/DiagnosticArray, with quality:=true): each answered frame's "
                    "estimated pixel accuracy and level OK/WARN/ERROR, under the input's header",
                    "/diagnostics (diagnostic_msgs/DiagnosticArray)"]),
    ("services", ["~/enable (std_srvs/SetBool), ~/reset, ~/save (std_srvs/Trigger)",
                  "lifecycle: ~/change_state, ~/get_state, ~/get_available_states, "
                  "~/get_available_transitions (autostart:=false waits for them)"]),
)


def _help_text() -> str:
    """``tta_node --help``: every parameter of ``runtime.params.SPECS`` (the table that declares them)."""
    return format_help(
        NODE_NAME, describe(__doc__), [_param_help(s) for s in P.SPECS], sections=_HELP_SECTIONS,
        when_legend=P.WHEN_LEGEND)


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of ``ros2 run tta_perception tta_node`` (and of the launch file); ``-h``/``--help``
    (before ``--ros-args``) prints the parameters and exits 0 without initialising rclpy."""
    if help_requested(sys.argv if args is None else args):
        return print_help(_help_text())
    import rclpy
    import rclpy.exceptions
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    invalid_handle = getattr(rclpy.exceptions, "InvalidHandle", ())  # () catches nothing

    keep_freed_memory()
    refused = init_rclpy(NODE_NAME, args)
    if refused is not None:
        return refused
    node = None
    try:
        # the executor first, while the context is surely valid: made after a start-up that a
        # Ctrl-C interrupted, rclpy fails half-way and prints a traceback from its destructor
        executor = SingleThreadedExecutor()
        node = TTANode()
        node.start()
        executor.add_node(node)
        while rclpy.ok():
            try:
                executor.spin_once(timeout_sec=0.5)
            except invalid_handle:  # an entity destroyed by a transition while in a wait set: harmless
                continue
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # a Ctrl-C during start-up shuts the context down under the transition or the executor
        # being made (rclpy then raises RCLError "context is not valid"): a shutdown, not a failure
        if rclpy.ok():
            raise
    finally:
        ignore_further_signals()
        if node is not None:
            node._stop_processing()
            node._free()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
