"""``tta_node``: a managed (lifecycle) ROS 2 node that adapts a camera model online, without labels.

Thin on purpose: messages are converted by ``image_codec``, frames become predictions in
``pipeline.Pipeline`` (the engine's ``StreamingAdapter``, the same code the benchmark runs), and this
module only wires topics, services, parameters, lifecycle and diagnostics.

Threads: the executor thread only stores the newest frame (``LatestSlot``); one worker thread decodes,
infers and publishes; the adapter adapts on its own background thread; a model reload (a parameter
change) builds the new pipeline on a short-lived thread. ``_infer_lock`` serialises inference with
reset/save/swap so a service never sees a half-finished frame.
"""
from __future__ import annotations

import array
import gc
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy.exceptions import (InvalidParameterTypeException, InvalidParameterValueException,
                              ParameterUninitializedException)
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String
from std_srvs.srv import SetBool, Trigger

from . import image_codec as codec
from . import params as P
from .health import Health, LatestSlot
from .qos import image_qos, latched_qos, output_qos

NODE_NAME = "tta_node"
_PARAM_TYPES = {
    "str": ParameterType.PARAMETER_STRING, "bool": ParameterType.PARAMETER_BOOL,
    "int": ParameterType.PARAMETER_INTEGER, "float": ParameterType.PARAMETER_DOUBLE,
    "int_array": ParameterType.PARAMETER_INTEGER_ARRAY,
    "str_array": ParameterType.PARAMETER_STRING_ARRAY,
}
# Counters always present in /diagnostics (0 until something happens), so tools can rely on them.
COUNTERS = ("frames_received", "frames_processed", "frames_dropped", "frames_during_reload",
            *codec.REASONS, "inference_errors", "nonfinite_outputs", "cuda_oom", "reload_failures",
            "resets_requested", "saves")


def _vision_msgs():
    """vision_msgs where installed (a ROS distro); None with the PyPI wheels."""
    try:
        from vision_msgs import msg as vm

        return vm
    except ImportError:
        return None


def _ros_home() -> Path:
    return Path(os.environ.get("ROS_HOME") or Path.home() / ".ros")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class TTANode(LifecycleNode):
    """See the module docstring; parameters are listed in ``tta_perception.ros.params.SPECS``."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._health = Health()
        self._slot = LatestSlot()
        self._infer_lock = threading.RLock()
        self._cfg_lock = threading.Lock()
        self._reloading = threading.Event()
        self._reload_gen = 0
        self._pipeline = None
        self._parked: Optional[dict[str, Any]] = None  # adapted state kept while inactive
        self._lc_state = "unconfigured"
        self._last_task: Optional[str] = None
        self._last_names: Optional[list[str]] = None
        self._device_override: Optional[str] = None
        self._subscription = None
        self._worker: Optional[threading.Thread] = None
        self._pubs: dict[str, Any] = {}
        self._active = False
        self._config_error = ""
        self._reload_error = ""
        self._last_bad_total = 0
        self._last: dict[str, float] = {"confidence": float("nan"), "entropy": float("nan")}
        self._vm = _vision_msgs()

        self._startup_errors = self._declare_parameters()
        self._cfg = {s.name: self._read(s.name) for s in P.SPECS}
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(float(self._cfg["diagnostics_period"]),
                                             self._publish_diagnostics)
        self.create_service(SetBool, "~/enable", self._srv_enable)
        self.create_service(Trigger, "~/reset", self._srv_reset)
        self.create_service(Trigger, "~/save", self._srv_save)

    # ================================================================== parameters
    def _declare_parameters(self) -> list[str]:
        """Declare every parameter with its description and range; collect (not raise) bad start-up
        values so configure can refuse them with one clear line."""
        errors = []
        for spec in P.SPECS:
            desc = ParameterDescriptor(name=spec.name, type=_PARAM_TYPES[spec.type],
                                       description=spec.description)
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
                errors.append(f"parameter {spec.name!r}: {_first_line(err)}")
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

    def _methods(self) -> Optional[list[str]]:
        try:
            from tta_perception.engine import list_methods

            return list_methods()
        except ImportError:
            return None

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate (message names the parameter and the allowed values), then apply."""
        updates: dict[str, Any] = {}
        for p in params:
            if p.name not in P.SPEC:
                continue
            value = p.value
            if isinstance(value, (tuple, array.array)):
                value = list(value)
            if value is None and P.SPEC[p.name].type.endswith("array"):
                value = []
            reason = P.check(p.name, value, self._methods() if p.name == "method" else None)
            if reason is None:
                reason = self._check_paths(p.name, value)
            if reason:
                self.get_logger().warning(f"rejected: {reason}")
                return SetParametersResult(successful=False, reason=reason)
            updates[p.name] = value
        with self._cfg_lock:
            self._cfg.update(updates)
        self._apply(updates)
        return SetParametersResult(successful=True)

    @staticmethod
    def _check_paths(name: str, value: Any) -> Optional[str]:
        """Missing files are rejected at once rather than failing a background reload later."""
        if name in ("bundle", "resume_from") and value and not Path(os.path.expanduser(value)).exists():
            return f"parameter {name!r}: {value!r} not found"
        return None

    def _apply(self, updates: dict[str, Any]) -> None:
        if not updates:
            return
        pipe = self._pipeline
        if pipe is not None:
            if "enable" in updates:
                pipe.set_enabled(bool(updates["enable"]))
                self.get_logger().info(f"adaptation {'enabled' if updates['enable'] else 'disabled'}")
            if "lr" in updates or "lr_consistency" in updates:
                changed = pipe.set_learning_rates(self._cfg["lr"], self._cfg["lr_consistency"])
                if changed:
                    self.get_logger().info(f"learning rates updated: {', '.join(changed)}")
        whens = {P.SPEC[n].when for n in updates}
        if "reload" in whens and pipe is not None:
            self._start_reload("parameters " + ", ".join(n for n in updates if P.SPEC[n].when == "reload"))
        if "subscription" in whens and self._active:
            self._subscribe()

    # ================================================================== lifecycle
    def start(self) -> None:
        """Autostart (default): configure and activate by themselves, as yolo_ros does."""
        if not self._cfg["autostart"]:
            self.get_logger().info("autostart is false: waiting for lifecycle transitions")
            return
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from .pipeline import ConfigError, Pipeline

        self._config_error = ""
        if self._startup_errors:
            return self._refuse(self._startup_errors[0])
        cfg = self._effective_cfg()
        try:
            pipe = Pipeline(cfg)
        except ConfigError as err:
            return self._refuse(str(err))
        except Exception as err:  # engine/model errors: still one line, details at debug level
            import traceback

            self.get_logger().debug(traceback.format_exc())
            return self._refuse(f"{type(err).__name__}: {_first_line(err)}")
        for warning in pipe.warnings:
            self.get_logger().warning(warning)
        with self._infer_lock:
            self._pipeline = pipe
        self._make_publishers(pipe)
        self._lc_state = "inactive"
        self.get_logger().info(
            f"configured: {pipe.task} model {cfg['model']!r} method {cfg['method']!r} on {pipe.device}, "
            f"input {pipe.input_size[0]}x{pipe.input_size[1]}"
            + (f", bundle {pipe.bundle!r}" if pipe.bundle else "")
            + (f", resumed from {cfg['resume_from']!r}" if cfg["resume_from"] else ""))
        return TransitionCallbackReturn.SUCCESS

    def _refuse(self, message: str) -> TransitionCallbackReturn:
        self._config_error = message
        self.get_logger().error(f"configure refused: {message}")
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._pipeline is None:  # freed by deactivate: load again, with the adapted state
            result = self._unpark()
            if result != TransitionCallbackReturn.SUCCESS:
                return result
        self._slot = LatestSlot()
        self._worker = threading.Thread(target=self._work, args=(self._slot,), name="tta_worker",
                                        daemon=True)
        self._worker.start()
        self._active = True
        self._subscribe()
        self._lc_state = "active"
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop processing and free the model (GPU memory) as yolo_ros does; the adapted state is
        kept on the CPU and restored by the next activate."""
        self._stop_processing()
        with self._infer_lock:
            pipe = self._pipeline
            self._parked = pipe.cpu_state_dict() if pipe is not None else None
        self._free(keep_publishers=True)
        self._lc_state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._parked = None
        self._free()
        self._lc_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _unpark(self) -> TransitionCallbackReturn:
        from .pipeline import ConfigError, Pipeline

        try:
            pipe = Pipeline(self._effective_cfg())
        except Exception as err:
            message = str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {_first_line(err)}"
            self._config_error = message
            self.get_logger().error(f"activate refused: {message}")
            return TransitionCallbackReturn.FAILURE
        parked, self._parked = self._parked, None
        if parked is not None:
            try:
                pipe.load_state_dict(parked)
            except Exception as err:  # e.g. the method was changed while inactive
                self.get_logger().warning(f"adapted state not restored ({_first_line(err)}): starting "
                                          "from the source state")
        old_task = (self._last_task, self._last_names)
        with self._infer_lock:
            self._pipeline = pipe
        if not self._pubs or old_task != (pipe.task, pipe.class_names):
            self._make_publishers(pipe)
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._parked = None
        self._free()
        self._lc_state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._parked = None
        self._free()
        self._lc_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _stop_processing(self) -> None:
        self._active = False
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        self._slot.close()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None
        self._release_cuda_cache()

    def _free(self, keep_publishers: bool = False) -> None:
        """Drop the model (and the publishers unless kept), freeing (GPU) memory."""
        with self._infer_lock:
            self._reload_gen += 1  # a reload still running is discarded
            self._reloading.clear()
            pipe, self._pipeline = self._pipeline, None
        if pipe is not None:
            self._last_task, self._last_names = pipe.task, pipe.class_names
            pipe.close()
        if not keep_publishers:
            for pub in self._pubs.values():
                self.destroy_publisher(pub)
            self._pubs = {}
        del pipe
        gc.collect()
        self._release_cuda_cache()

    @staticmethod
    def _release_cuda_cache() -> None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _effective_cfg(self) -> dict[str, Any]:
        with self._cfg_lock:
            cfg = dict(self._cfg)
        if self._device_override:
            cfg["device"] = self._device_override
        return cfg

    # ================================================================== reload
    def _start_reload(self, why: str) -> None:
        with self._infer_lock:
            self._reload_gen += 1
            gen = self._reload_gen
            self._reloading.set()
        self.get_logger().info(f"reloading the model ({why})")
        threading.Thread(target=self._reload, args=(gen, self._effective_cfg()), name="tta_reload",
                         daemon=True).start()

    def _reload(self, gen: int, cfg: dict[str, Any]) -> None:
        from .pipeline import Pipeline

        new, error = None, ""
        try:
            new = Pipeline(cfg)
        except Exception as err:
            error = _first_line(err)
        old = None
        with self._infer_lock:
            if gen != self._reload_gen:  # superseded by a newer reload or a cleanup
                if new is not None:
                    new.close()
                return
            if new is not None:
                # live settings changed while it was building win over the snapshot it was built from
                new.set_enabled(bool(self._cfg["enable"]))
                new.set_learning_rates(self._cfg["lr"], self._cfg["lr_consistency"])
                old, self._pipeline = self._pipeline, new
                self._reload_error = ""
            else:
                self._reload_error = error
            self._reloading.clear()
        if new is None:
            self._health.count("reload_failures")
            self.get_logger().error(f"reload failed, still running the previous model: {error}")
            return
        for warning in new.warnings:
            self.get_logger().warning(warning)
        if old is not None:
            old.close()
        if old is None or old.task != new.task or old.class_names != new.class_names:
            self._make_publishers(new)
        self.get_logger().info(f"reloaded: {new.task} method {cfg['method']!r} on {new.device}")

    # ================================================================== topics
    def _make_publishers(self, pipe) -> None:
        """Create the outputs of ``pipe``'s task; the old set is destroyed only after the swap so the
        worker never publishes on a destroyed publisher."""
        old = self._pubs
        out, pubs = output_qos(), {}
        if pipe.task == "segmentation":
            pubs["class_ids"] = self.create_publisher(Image, "class_ids", out)
            pubs["confidence"] = self.create_publisher(Image, "confidence", out)
            pubs["confidence_float"] = self.create_publisher(Image, "confidence_float", out)
            pubs["overlay"] = self.create_publisher(Image, "overlay", out)
        else:
            pubs["classification_json"] = self.create_publisher(String, "classification_json", out)
            if self._vm is not None:
                pubs["classification"] = self.create_publisher(self._vm.Classification,
                                                               "classification", out)
        pubs["class_names"] = self.create_publisher(String, "class_names", latched_qos())
        if self._vm is not None and hasattr(self._vm, "LabelInfo"):
            pubs["label_info"] = self.create_publisher(self._vm.LabelInfo, "label_info", latched_qos())
        self._pubs = pubs
        for pub in old.values():
            self.destroy_publisher(pub)
        self._publish_class_names(pipe)

    def _publish_class_names(self, pipe) -> None:
        stamp = self.get_clock().now().to_msg()
        payload = {"task": pipe.task, "class_names": pipe.class_names,
                   "colors": pipe.palette[:len(pipe.class_names)].tolist(), "unlabeled": 255}
        self._pubs["class_names"].publish(String(data=json.dumps(payload)))
        if "label_info" in self._pubs:
            vm = self._vm
            info = vm.LabelInfo()
            info.header.stamp = stamp
            info.class_map = [vm.VisionClass(class_id=i, class_name=n)
                              for i, n in enumerate(pipe.class_names)]
            info.threshold = 0.0
            self._pubs["label_info"].publish(info)

    def _subscribe(self) -> None:
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        cfg = self._effective_cfg()
        qos = image_qos(cfg["qos_reliability"], cfg["qos_depth"])
        if cfg["compressed"]:
            self._subscription = self.create_subscription(
                CompressedImage, "image/compressed", lambda m: self._on_frame(m, True), qos)
        else:
            self._subscription = self.create_subscription(
                Image, "image", lambda m: self._on_frame(m, False), qos)
        self.get_logger().info(f"listening on {self._subscription.topic_name} "
                               f"({cfg['qos_reliability']}, depth {cfg['qos_depth']})")

    def _on_frame(self, msg: Any, compressed: bool) -> None:
        """Executor thread: O(1), only keeps the newest frame (the previous unprocessed one is dropped)."""
        self._health.arrival()
        if self._slot.put((msg, compressed, time.monotonic())):
            self._health.count("frames_dropped")

    # ================================================================== worker
    def _work(self, slot: LatestSlot) -> None:
        while True:
            item = slot.take(timeout=0.5)
            if item is None:
                if slot.closed:
                    return
                continue
            try:
                self._process(*item)
            except Exception as err:  # never let one frame kill the worker
                self._health.count("inference_errors")
                self.get_logger().error(f"frame failed: {type(err).__name__}: {_first_line(err)}",
                                        throttle_duration_sec=5.0)

    def _process(self, msg: Any, compressed: bool, t_arrival: float) -> None:
        from .pipeline import is_cuda_oom

        cfg = self._cfg
        try:
            if compressed:
                rgb = codec.compressed_to_rgb(msg.format, msg.data, cfg["max_image_pixels"])
            else:
                rgb = codec.raw_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                                       cfg["max_image_pixels"])
        except codec.ImageError as err:
            self._health.count(err.reason)
            self.get_logger().warning(f"bad frame ({err.reason}): {err}", throttle_duration_sec=5.0)
            return
        with self._infer_lock:
            pipe = self._pipeline
            if pipe is None or self._reloading.is_set():
                self._health.count("frames_during_reload")
                return
            t0 = time.monotonic()
            try:
                result = pipe.infer(rgb, output_size=cfg["output_size"], top_k=cfg["top_k"],
                                    overlay_alpha=cfg["overlay_alpha"],
                                    overlay=cfg["publish_overlay"] and self._listened("overlay"),
                                    confidence=cfg["publish_confidence"] and self._listened("confidence"),
                                    confidence_float=(cfg["publish_confidence_float"]
                                                      and self._listened("confidence_float")))
            except Exception as err:
                if is_cuda_oom(err) and cfg["device"] == "auto" and pipe.device != "cpu":
                    self._health.count("cuda_oom")
                    self.get_logger().warning("CUDA out of memory: falling back to CPU")
                    self._device_override = "cpu"
                    self._start_reload("CUDA out of memory")
                    return
                raise
            model_s = time.monotonic() - t0
        self._publish(result, msg.header, pipe)
        if result.nonfinite:
            self._health.count("nonfinite_outputs")
        self._last = {"confidence": result.mean_confidence, "entropy": result.mean_entropy}
        self._health.processed(time.monotonic() - t_arrival, model_s)

    def _listened(self, name: str) -> bool:
        """Whether an optional output has a subscriber: maps nobody reads are not computed (as
        image_transport's lazy publishers), which keeps the per-frame cost to what is used."""
        pub = self._pubs.get(name)
        try:
            return pub is not None and pub.get_subscription_count() > 0
        except Exception:  # a publisher being destroyed by a reload: compute as asked
            return True

    def _publish(self, result, header_in: Header, pipe) -> None:
        cfg, pubs = self._cfg, self._pubs
        header = Header(stamp=header_in.stamp, frame_id=header_in.frame_id)
        if result.task == "segmentation":
            if "class_ids" not in pubs:
                return
            pubs["class_ids"].publish(_image(header, "mono8", *codec.mono8(result.class_ids)))
            if cfg["publish_confidence"] and result.confidence_u8 is not None:
                pubs["confidence"].publish(_image(header, "mono8", *codec.mono8(result.confidence_u8)))
            if result.confidence is not None:
                h, w, step, data, big = codec.float32c1(result.confidence)
                pubs["confidence_float"].publish(_image(header, "32FC1", h, w, step, data, big))
            if cfg["publish_overlay"] and result.overlay is not None:
                pubs["overlay"].publish(_image(header, "rgb8", *codec.rgb8(result.overlay)))
            return
        if "classification_json" not in pubs:
            return
        names = pipe.class_names
        top = [{"class_id": i, "class_name": names[i], "score": s}
               for i, s in zip(result.topk_ids, result.topk_scores)]
        best = top[0] if top else {"class_id": -1, "class_name": "", "score": float("nan")}
        payload = {"stamp": {"sec": header.stamp.sec, "nanosec": header.stamp.nanosec},
                   "frame_id": header.frame_id, "label": best["class_id"],
                   "class_name": best["class_name"], "score": best["score"], "top_k": top}
        pubs["classification_json"].publish(String(data=json.dumps(payload)))
        if "classification" in pubs:
            vm = self._vm
            out = vm.Classification()
            out.header = header
            out.results = [vm.ObjectHypothesis(class_id=str(t["class_id"]), score=float(t["score"]))
                           for t in top]
            pubs["classification"].publish(out)

    # ================================================================== services
    def _srv_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        result = self.set_parameters([Parameter("enable", Parameter.Type.BOOL, bool(request.data))])[0]
        response.success = bool(result.successful)
        response.message = (f"adaptation {'enabled' if request.data else 'disabled'}"
                            if result.successful else result.reason)
        return response

    def _srv_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._infer_lock:
            pipe = self._pipeline
            if self._lc_state not in ("inactive", "active"):
                response.success, response.message = False, "not configured"
                return response
            if pipe is None:
                self._parked = None  # inactive: the next activate starts from the source state
            else:
                pipe.adapter.reset()
        self._health.count("resets_requested")
        self.get_logger().info("reset to the source state")
        response.success, response.message = True, "reset to the source state"
        return response

    def _srv_save(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        path = self._save_path()
        from .pipeline import save_state_file

        with self._infer_lock:
            pipe, parked = self._pipeline, self._parked
            if pipe is None and parked is None:
                response.success = False
                response.message = ("not configured" if self._lc_state not in ("inactive", "active")
                                    else "inactive and reset: nothing adapted to save")
                return response
            try:
                save_state_file(pipe.state_dict() if pipe is not None else parked, path)
            except Exception as err:
                response.success, response.message = False, f"save failed: {_first_line(err)}"
                self.get_logger().error(response.message)
                return response
        self._health.count("saves")
        self.get_logger().info(f"adapted state saved to {path}")
        response.success, response.message = True, str(path)
        return response

    def _save_path(self) -> Path:
        configured = self._cfg["save_path"].strip()
        if configured:
            return Path(os.path.expanduser(configured))
        return _ros_home() / "tta_perception" / f"{self.get_name()}.pt"

    # ================================================================== diagnostics
    def diagnostics(self) -> dict[str, Any]:
        """Everything /diagnostics reports, as a dict (also handy in tests and tools)."""
        snap = self._health.snapshot()
        pipe = self._pipeline
        out: dict[str, Any] = {k: snap.get(k, 0) for k in COUNTERS}
        out.update({k: snap[k] for k in ("input_rate_hz", "latency_p50_ms", "latency_p95_ms",
                                         "model_p50_ms")})
        cfg = self._cfg
        out.update({"state": self._lc_state,
                    "task": pipe.task if pipe else cfg["task"], "model": cfg["model"],
                    "method": cfg["method"], "device": pipe.device if pipe else cfg["device"],
                    "adaptation_enabled": bool(cfg["enable"]), "reloading": self._reloading.is_set(),
                    "confidence": self._last["confidence"], "entropy": self._last["entropy"]})
        stats = pipe.stats() if pipe else {}  # the engine's StreamingAdapter.stats()
        method = stats.get("method") if isinstance(stats.get("method"), dict) else {}
        out["adaptation_steps"] = int(stats.get("adapt_steps", 0) or 0)
        out["adaptation_errors"] = int(stats.get("errors", 0) or 0)
        out["adapt_coalesced"] = int(stats.get("coalesced", 0) or 0)
        out["mean_adapt_ms"] = float(stats.get("mean_adapt_ms", float("nan")))
        out["predict_mode"] = str(stats.get("predict_mode", ""))
        out["adapt_worker"] = (f"nice {stats.get('worker_nice', 0)}, {stats.get('worker_threads', 0)} threads"
                               if stats.get("worker_threads") else "")
        for key in ("resets", "collapse_resets", "method_resets", "nan_skips"):
            out[key] = int(method.get(key, 0) or 0)
        out["adaptation_entropy"] = float(method.get("last_entropy", float("nan")))
        out["selected_blocks"] = ",".join(pipe.selected_blocks() if pipe else [])
        out["config_error"] = self._config_error
        out["reload_error"] = self._reload_error
        return out

    def _publish_diagnostics(self) -> None:
        d = self.diagnostics()
        bad = sum(int(d[r]) for r in codec.REASONS) + int(d["inference_errors"])
        level, message = DiagnosticStatus.OK, "adapting" if d["adaptation_enabled"] else "inference only"
        if d["config_error"]:
            level, message = DiagnosticStatus.ERROR, f"configure refused: {d['config_error']}"
        elif d["state"] != "active":
            level, message = DiagnosticStatus.WARN, d["state"]
        elif d["reload_error"]:
            level, message = DiagnosticStatus.WARN, f"reload failed: {d['reload_error']}"
        elif bad > self._last_bad_total:
            level, message = DiagnosticStatus.WARN, "bad frames received (see counters)"
        self._last_bad_total = bad
        if level == DiagnosticStatus.OK and d["frames_processed"]:
            message += f", {d['input_rate_hz']:.1f} Hz in, p50 {d['latency_p50_ms']:.0f} ms"
        status = DiagnosticStatus(level=level, name=f"tta_perception: {self.get_fully_qualified_name()}",
                                  message=message, hardware_id=str(d["device"]))
        status.values = [KeyValue(key=k, value=_fmt(v)) for k, v in d.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [status]
        self._diag_pub.publish(arr)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _image(header: Header, encoding: str, height: int, width: int, step: int, data: bytes,
           bigendian: bool = False) -> Image:
    msg = Image(header=header, height=height, width=width, encoding=encoding,
                is_bigendian=bool(bigendian), step=step)
    buf = array.array("B")
    buf.frombytes(data)  # array.array is taken as is by the message (no per-byte checks)
    msg.data = buf
    return msg


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of ``ros2 run tta_perception tta_node`` (and of the launch file)."""
    import rclpy.exceptions
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    invalid_handle = getattr(rclpy.exceptions, "InvalidHandle", ())  # () catches nothing

    rclpy.init(args=args)
    node = None
    try:
        node = TTANode()
        node.start()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok():
            try:
                executor.spin_once(timeout_sec=0.5)
            except invalid_handle:  # an entity destroyed by a transition while in a wait set: harmless
                continue
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node._stop_processing()
            node._free()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
