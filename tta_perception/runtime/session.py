"""The adaptation node without ROS: its configuration, the pipeline it runs, reloads, frames, services
and the diagnostics it reports. ``ros.tta_node`` only declares the parameters, converts messages,
publishes and maps lifecycle transitions onto this class, so everything here is testable without a
ROS install.

Threads: frames are inferred on the node's worker thread; the adapter adapts on its own thread; a
model reload (a ``reload`` parameter change) builds the new pipeline on a short-lived thread while
the old one keeps serving. ``infer_lock`` serialises inference with reset/save/swap, so a service
never sees a half-finished frame.

The session's collaborators: ``runtime.reload.ReloadCoordinator`` (which reload request is the
newest, the builder thread), ``runtime.counters.FrameCounters`` (frames in and out, per camera) and
``runtime.diagnostics.Diagnostics`` (what /diagnostics reports).
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from . import image_codec as codec
from . import params as P
from .counters import FrameCounters
from .diagnostics import Diagnostics, source_text
from .errors import ConfigError, one_line
from .reload import ReloadCoordinator

# parameters that change the memory a configuration needs
MEMORY_PARAMS = {"input_size", "window", "method", "max_image_pixels", "device"}


def _model_problem(model: str, architecture: str, max_bytes: Optional[int] = None) -> Optional[str]:
    """What is wrong with naming this model/architecture, as far as it can be told without loading
    (a checkpoint must be a regular file of at most ``max_bytes``)."""
    from .model_loader import checkpoint_problem, embedded_models, looks_like_path

    if architecture:
        if not architecture.startswith("torchvision:") and ":" not in architecture:
            from ..models import list_models

            if architecture not in list_models():
                return (f"parameter 'architecture' must be one of {', '.join(list_models())}; "
                        f"got {architecture!r}")
        if model and model != architecture:
            return checkpoint_problem(model, max_bytes=max_bytes)
        return None
    if looks_like_path(model):
        return checkpoint_problem(model, max_bytes=max_bytes)
    names = embedded_models()
    if model not in names:
        return f"parameter 'model' must be one of {', '.join(names)} or a checkpoint path; got {model!r}"
    return None


#: files a parameter names, with the kind of file (``files.CAPS``); weights are also capped by the
#: node's memory budget (a file larger than ``max_memory_mb`` cannot be loaded within it)
FILE_PARAMS = {"bundle": "weights", "resume_from": "weights", "domain_calibration": "calibration",
               "quality_calibration": "calibration"}


class Log(Protocol):
    def info(self, message: str) -> None: ...
    def warning(self, message: str, throttle: bool = False) -> None: ...
    def error(self, message: str, throttle: bool = False) -> None: ...


def registered_methods() -> Optional[list[str]]:
    try:
        from ..engine import list_methods

        return list_methods()
    except ImportError:
        return None


def release_memory() -> None:
    """After a model is dropped: freed heap back to the OS (RSS near its baseline), CUDA cache too."""
    from .memory import release_freed_memory

    release_freed_memory()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class Session:
    """State and behaviour of one ``tta_node`` (see the module docstring).

    ``on_swap(new, old)`` is called after a reload replaced the pipeline (the node remakes its
    publishers when the task or the class names changed); ``on_rollback(values)`` after a failed
    reload put ``values`` back (the node sets its parameters to them).
    """

    def __init__(self, cfg: dict[str, Any], log: Log,
                 on_swap: Callable[[Any, Optional[Any]], None] = lambda new, old: None,
                 on_rollback: Callable[[dict[str, Any]], None] = lambda values: None,
                 node_name: str = "tta_node") -> None:
        from .state import state_dir_of

        self.log, self.on_swap, self.on_rollback = log, on_swap, on_rollback
        self.node_name = node_name
        self.infer_lock = threading.RLock()
        self._cfg_lock = threading.Lock()
        self._cfg = dict(cfg)
        self.state_dir = state_dir_of(str(cfg.get("state_dir") or ""))  # fixed for the node's life
        self.reloads = ReloadCoordinator(self.infer_lock, self.effective_cfg, self._build, self._install,
                                         lambda n: self.health.count("reloads_coalesced", n), log)
        self.reloading = self.reloads.reloading  # set while a reload is wanted or building
        self._save_lock = threading.Lock()
        self._save_future: Optional[Any] = None  # concurrent.futures.Future of the save running
        # several cameras (the 'cameras' parameter, fixed at start-up): counted each, beside the totals
        self.cameras: list[str] = list(cfg.get("cameras") or [])
        #: per camera, the reliability its image subscription has now (best_available resolves it)
        self.subscribed_reliability: dict[str, str] = {}
        self.counters = FrameCounters(self.cameras, log, lambda camera: self.subscribed_reliability.get(camera)
                                      or self.cfg["qos_reliability"])
        self.health = self.counters.health
        self.camera_health = self.counters.cameras
        self.report = Diagnostics(self)
        self.pipeline = None
        self.parked: Optional[dict[str, Any]] = None  # adapted state kept while inactive
        self.state = "unconfigured"
        self.device_override: Optional[str] = None
        self.config_error = ""
        self.reload_error = ""
        self.good_cfg: Optional[dict[str, Any]] = None  # the configuration the running model came from
        self.last_task: Optional[tuple[str, list[str]]] = None
        # the outputs' quality per camera (worker thread): a LevelTracker each, for the estimator in force
        self._trackers: dict[str, Any] = {}
        self._trackers_of: Optional[tuple[int, int]] = None  # (id of the estimator, quality_window)
        self._quality_now: dict[str, dict[str, Any]] = {}  # camera -> its recent quality (diagnostics)

    # ================================================================== configuration
    @property
    def cfg(self) -> dict[str, Any]:
        """The parameters in force (a copy)."""
        with self._cfg_lock:
            return dict(self._cfg)

    def effective_cfg(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.device_override:
            cfg["device"] = self.device_override
        return cfg

    def weights_cap(self) -> int:
        """The largest weights file the node reads: its memory budget."""
        return int(self.cfg["max_memory_mb"]) << 20

    def check(self, name: str, value: Any) -> Optional[str]:
        """Why ``value`` is refused for parameter ``name`` on its own (None: accepted). A file must be
        a regular file within its cap, and a save must land in ``state_dir``: refused at once rather
        than failing (or blocking) a background reload or a save later."""
        reason = P.check(name, value, registered_methods() if name == "method" else None)
        if reason is None and name in FILE_PARAMS and value.strip():
            from ..files import problem

            kind = FILE_PARAMS[name]
            reason = problem(value.strip(), f"parameter {name!r}", kind,
                             self.weights_cap() if kind == "weights" else None)
        if reason is None and name == "resume_from" and value.strip():
            from .state import is_state_file

            if not is_state_file(Path(value.strip())):  # refused in the answer, not at the next configure
                reason = f"parameter 'resume_from': {value.strip()!r} is not a node state (a file written by ~/save)"
        if reason is None and name == "adapt_cameras":
            unknown = [c for c in value if c not in self.cameras]
            if unknown:
                reason = (f"parameter 'adapt_cameras' names {unknown[0]!r}, which is not one of the node's "
                          f"cameras ({', '.join(self.cameras) or 'none: the cameras parameter is empty'})")
        if reason is None and name == "save_path":
            from .state import save_target

            try:
                save_target(value, self.state_dir, self.node_name)
            except ValueError as err:
                reason = str(err)
        return reason

    def save_path(self) -> Path:
        """Where ``~/save`` writes now (``save_path`` inside ``state_dir``)."""
        from .state import save_target

        return save_target(self.cfg["save_path"], self.state_dir, self.node_name)

    def check_updates(self, updates: dict[str, Any]) -> Optional[str]:
        """Why a run-time change of several parameters at once is refused (None: accepted): each
        value on its own, then what can be decided before a reload against the running model
        (architecture imports, model names and files, the device, the method's predictors, task and
        class names of the running model, the memory budget). What only a reload can tell is rolled
        back if the reload fails."""
        for name, value in updates.items():
            if P.SPEC[name].read_only and value != self.cfg[name]:
                return f"parameter {name!r} is read-only: it is taken at start-up only"
            reason = self.check(name, value)
            if reason:
                return reason
        cfg = {**self.cfg, **updates}
        changed = set(updates)
        arch, model = cfg["architecture"].strip(), cfg["model"].strip()
        if "architecture" in changed and ":" in arch and not arch.startswith("torchvision:"):
            from ..models import list_models

            return (f"parameter 'architecture' {arch!r}: 'module:function' imports code, so it is taken only "
                    "from the parameter file at start-up (allow_code_architecture: true); at run time use "
                    f"a registered name: {', '.join(list_models())}")
        if changed & {"architecture", "model"}:
            reason = _model_problem(model, arch, self.weights_cap())
            if reason:
                return reason
        if "device" in changed:
            from .devices import resolve_device

            try:
                resolve_device(cfg["device"], "parameter 'device'")
            except ConfigError as err:
                return str(err)
        if changed & {"predict_mode", "method"} and cfg["predict_mode"] in ("student", "teacher"):
            from ..engine import method_class

            need = "model" if cfg["predict_mode"] == "student" else "teacher"
            if need not in method_class(cfg["method"]).PREDICTORS:
                return (f"parameter 'predict_mode' is {cfg['predict_mode']!r} but method {cfg['method']!r} "
                        f"has no {cfg['predict_mode']}; use 'method' or 'auto'")
        reason = P.threshold_problem(cfg)
        if reason:
            return reason
        pipe = self.pipeline
        if cfg["quality"] and changed & set(P.QUALITY_PARAMS + ("model", "method")):
            reason = self._quality_problem(cfg, pipe if not changed & {"model", "method", "quality_calibration"}
                                           else None)
            if reason:
                return reason
        if (pipe is not None and ("guard" in changed and cfg["guard"] or "quality_source_every" in changed)
                and not changed & MEMORY_PARAMS):
            from .memory import check_budget

            reason = check_budget(cfg, pipe.model, input_size=pipe.input_size)  # the guard's source copy
            if reason:
                return reason
        if pipe is not None and not changed & {"architecture", "model"}:
            if cfg["task"] not in ("auto", pipe.task):
                return (f"parameter 'task' is {cfg['task']!r} but the running model "
                        f"{pipe.cfg['model']!r} does {pipe.task}; change 'model' with it")
            if cfg["class_names"] and len(cfg["class_names"]) != pipe.model.num_classes:
                return (f"parameter 'class_names' has {len(cfg['class_names'])} names but the running "
                        f"model has {pipe.model.num_classes} classes")
        if pipe is not None and changed & MEMORY_PARAMS:
            from .memory import check_budget

            return check_budget(cfg, pipe.model, running=pipe)
        return None

    def _quality_problem(self, cfg: dict[str, Any], pipe: Any) -> Optional[str]:
        """Why the quality settings of ``cfg`` cannot be used (None: they can): the calibration (read
        again unless ``pipe``'s is the one) and the thresholds against it."""
        from .quality import QualityEstimator, load_calibration

        try:
            if pipe is not None and pipe.quality is not None:
                cal = pipe.quality.calibration
            else:
                cal, _ = load_calibration(cfg["model"], cfg["method"], str(cfg["quality_calibration"]).strip())
            QualityEstimator(cal, P.threshold_or_none(cfg["quality_warn_below"]),
                             P.threshold_or_none(cfg["quality_error_below"]))
        except ConfigError as err:
            return str(err)
        except ValueError as err:
            return f"parameters 'quality_warn_below' / 'quality_error_below': {one_line(err)}"
        return None

    def _apply_quality(self, pipe: Any, cfg: dict[str, Any], names: set[str]) -> None:
        """Live: a new quality estimator and/or collapse guard for the changed ``names`` (under the
        inference lock: a frame sees the old or the new one, never half of each)."""
        try:
            with self.infer_lock:
                if names & set(P.QUALITY_PARAMS):
                    for note in pipe.set_quality(cfg):
                        self.log.info(note)
                if names & set(P.GUARD_PARAMS):
                    pipe.set_guard(cfg)
        except ConfigError as err:  # checked before it was accepted; a file changed since
            self.log.error(f"quality settings not applied: {err}")
            return
        if names & set(P.GUARD_PARAMS):
            self.log.info("collapse guard " + ("on (its checks start again)" if cfg["guard"] else "off"))

    def update(self, updates: dict[str, Any]) -> set[str]:
        """Apply accepted parameter values: live ones at once, a background reload for ``reload``
        ones; returns the change modes involved (the node re-subscribes for ``subscription``)."""
        if not updates:
            return set()
        with self._cfg_lock:
            self._cfg.update(updates)
            cfg = dict(self._cfg)
        pipe = self.pipeline
        if pipe is not None:
            if "enable" in updates:
                pipe.set_enabled(bool(updates["enable"]))
                self.log.info(f"adaptation {'enabled' if updates['enable'] else 'disabled'}")
            if "temporal_fusion" in updates or "temporal_fusion_mode" in updates:
                pipe.set_temporal_fusion(cfg["temporal_fusion"], cfg["temporal_fusion_mode"])
            if "lr" in updates or "lr_consistency" in updates:
                changed = pipe.set_learning_rates(cfg["lr"], cfg["lr_consistency"])
                if changed:
                    self.log.info(f"learning rates updated: {', '.join(changed)}")
            live_quality = set(updates) & set(P.QUALITY_PARAMS + P.GUARD_PARAMS)
            if live_quality and not any(P.SPEC[n].when == "reload" for n in updates):
                self._apply_quality(pipe, cfg, live_quality)  # (a reload builds them from cfg anyway)
        whens = {P.SPEC[n].when for n in updates}
        later = [n for n in updates if P.SPEC[n].when == "startup"]
        if later and self.state != "unconfigured":
            self.log.info(f"{', '.join(later)} take(s) effect at the next configure (cleanup + configure, "
                          "or a restart)")
        if "reload" in whens and pipe is not None:
            self.start_reload("parameters " + ", ".join(n for n in updates if P.SPEC[n].when == "reload"))
        return whens

    # ================================================================== lifecycle
    def _build(self, cfg: dict[str, Any], resume: bool = False):
        """A pipeline for ``cfg`` (with the ``resume_from`` state only at configure), or the one-line
        reason it cannot be built."""
        from .pipeline import Pipeline

        try:
            return Pipeline(cfg, resume=resume), ""
        except ConfigError as err:
            return None, str(err)
        except KeyboardInterrupt:
            if threading.current_thread() is threading.main_thread():
                raise
            return None, "KeyboardInterrupt while building the model"
        except BaseException as err:  # engine/model/user code, SystemExit included: one line, no wedge
            return None, f"{type(err).__name__}: {one_line(err)}"

    def configure(self, startup_errors: list[str] = ()) -> Optional[str]:
        """Load the model; the refusal message, or None once ``inactive``."""
        self.config_error = ""
        if startup_errors:
            self.config_error = startup_errors[0]
            return self.config_error
        cfg = self.effective_cfg()
        error = self.check("save_path", cfg["save_path"])
        if error:
            self.config_error = error
            return error
        pipe, error = self._build(cfg, resume=True)
        if pipe is None:
            self.config_error = error
            return error
        for warning in pipe.warnings:
            self.log.warning(warning)
        with self.infer_lock:
            self.pipeline = pipe
            self.good_cfg = dict(cfg)
        self.state = "inactive"
        self.log.info(
            f"configured: {pipe.task} model {cfg['model']!r} method {cfg['method']!r} on {pipe.device}, "
            f"input {pipe.input_size[0]}x{pipe.input_size[1]}"
            + (f", bundle {pipe.bundle!r}" if pipe.bundle else "")
            + (f", resumed from {cfg['resume_from']!r}" if cfg["resume_from"] else ""))
        return None

    def activate(self) -> Optional[str]:
        """Back to a loaded model after a deactivate (with the adapted state it had); the refusal
        message, or None."""
        if self.pipeline is None:
            pipe, error = self._build(self.effective_cfg())
            if pipe is None:
                self.config_error = error
                return error
            parked, self.parked = self.parked, None
            if parked is not None:
                try:
                    pipe.load_state_dict(parked)
                except Exception as err:  # e.g. the method was changed while inactive
                    self.log.warning(f"adapted state not restored ({one_line(err)}): starting from the "
                                     "source state")
            with self.infer_lock:
                self.pipeline = pipe
        self.state = "active"
        return None

    def deactivate(self) -> None:
        """Free the model (GPU memory) as yolo_ros does; the adapted state is kept on the CPU."""
        with self.infer_lock:
            pipe = self.pipeline
            self.parked = pipe.cpu_state_dict() if pipe is not None else None
        self.free()
        self.state = "inactive"

    def cleanup(self, state: str = "unconfigured") -> None:
        self.parked = None
        self.free()
        self.state = state

    def free(self) -> None:
        """Drop the model, freeing (GPU) memory; a reload still running is discarded. Idempotent."""
        with self.infer_lock:
            self.reloads.cancel()
            pipe, self.pipeline = self.pipeline, None
        if pipe is not None:
            self.last_task = (pipe.task, pipe.class_names)
            pipe.close()
        del pipe
        release_memory()

    # ================================================================== reload
    def start_reload(self, why: str, serve: bool = True) -> None:
        """Rebuild the pipeline in the background for the configuration now in force (coalesced:
        ``ReloadCoordinator``); the running model answers frames throughout unless ``serve`` is false."""
        self.reloads.request(why, serve)

    def is_reloading(self) -> bool:
        return self.reloading.is_set()

    def _install(self, cfg: dict[str, Any], new: Any, error: str) -> Callable[[], None]:
        """Swap in ``new`` (or roll back after a failed build), under the inference lock; what is
        left to do outside the locks (callbacks, logging, freeing the old model)."""
        if new is None:
            reverted = self._roll_back()
            self.reload_error = error + (f" (rolled back: {_listing(reverted)})" if reverted else "")
            return lambda: self._failed(reverted)
        # live settings changed while it was building win over the snapshot it was built from
        live = self.cfg
        new.set_enabled(bool(live["enable"]))
        new.set_learning_rates(live["lr"], live["lr_consistency"])
        new.set_temporal_fusion(live["temporal_fusion"], live["temporal_fusion_mode"])
        for names, apply in ((P.QUALITY_PARAMS, new.set_quality), (P.GUARD_PARAMS, new.set_guard)):
            if any(live[k] != cfg[k] for k in names):
                try:
                    apply(live)
                except ConfigError as err:  # checked when accepted; keeps the settings it was built with
                    self.log.error(f"quality settings not applied: {err}")
        old, self.pipeline = self.pipeline, new
        self.good_cfg = dict(cfg)
        self.reload_error = ""
        return lambda: self._swapped(cfg, new, old)

    def _failed(self, reverted: dict[str, Any]) -> None:
        release_memory()  # what the failed build allocated
        self.log.error(f"reload failed, still running the previous model: {self.reload_error}")
        if reverted:  # the parameters follow before the failure is counted: one consistent picture
            self.on_rollback(reverted)
            self.health.count("rollbacks")
        self.health.count("reload_failures")

    def _swapped(self, cfg: dict[str, Any], new: Any, old: Any) -> None:
        for warning in new.warnings:
            self.log.warning(warning)
        if old is not None:
            old.close()
        self.on_swap(new, old)
        del old
        release_memory()
        self.health.count("reloads")
        self.log.info(f"reloaded: {new.task} method {cfg['method']!r} on {new.device}")

    def _roll_back(self) -> dict[str, Any]:
        """Put the reload parameters back to the configuration the running model came from; the
        values that changed. Without one (nothing loaded yet) nothing is rolled back."""
        if self.good_cfg is None:
            return {}
        with self._cfg_lock:
            reverted = {k: self.good_cfg[k] for k, v in self._cfg.items()
                        if P.SPEC[k].when == "reload" and v != self.good_cfg.get(k)}
            self._cfg.update(reverted)
        return reverted

    # ================================================================== frames
    def arrival(self, stamp_s: Optional[float] = None, camera: str = "", source: Any = None,
                seq: Optional[int] = None) -> None:
        """A frame arrived (``FrameCounters.arrival``)."""
        self.counters.arrival(stamp_s, camera, source=source, seq=seq)

    def count(self, key: str, camera: str = "") -> None:
        self.counters.count(key, camera)

    def rejected(self, err: codec.ImageError, camera: str = "") -> None:
        self.counters.rejected(err, camera)

    def adapt_flags(self, cameras: list[str]) -> list[bool]:
        """Which of these cameras feed the adaptation window (``adapt_cameras``; empty: all)."""
        chosen = set(self.cfg["adapt_cameras"] or self.cameras)
        return [c in chosen or not self.cameras for c in cameras]

    def infer(self, rgb, **outputs: Any):
        """(result, pipeline, model seconds) of one decoded frame, or None when there is no model to
        run (a reload, CUDA out of memory: counted)."""
        done = self.infer_batch([rgb], [""], **outputs)
        return None if done is None else (done[0][0], done[1], done[2])

    def infer_batch(self, rgbs: list, cameras: list[str], stamps: Optional[list[Optional[float]]] = None,
                    **outputs: Any):
        """(results, pipeline, model seconds) of the newest decoded frame of several cameras, in one
        forward pass, or None when there is no model to run (a reload, CUDA out of memory: counted).
        ``stamps``: the frames' header stamps in seconds (each camera's flow chain, docs/video.md)."""
        from .devices import is_cuda_oom

        with self.infer_lock:
            pipe = self.pipeline
            reloading = self.reloading.is_set()
            if pipe is None or not self.reloads.serving():
                for camera in cameras:
                    self.count("frames_during_reload", camera)
                return None
            if reloading:  # answered by the running model while the new one builds
                for camera in cameras:
                    self.count("frames_during_reload", camera)
            t0 = time.monotonic()
            try:
                result = pipe.infer_batch(rgbs, self.adapt_flags(cameras), cameras=cameras, stamps=stamps,
                                          **outputs)
            except Exception as err:
                if is_cuda_oom(err) and self.cfg["device"] == "auto" and pipe.device != "cpu":
                    self.health.count("cuda_oom")
                    self.log.warning("CUDA out of memory: falling back to CPU")
                    self.device_override = "cpu"
                    self.start_reload("CUDA out of memory", serve=False)
                    return None
                raise
            model_s = time.monotonic() - t0
        self._observe_quality(pipe, cameras, result)
        return result, pipe, model_s

    def _observe_quality(self, pipe: Any, cameras: list[str], results: list) -> None:
        """Worker thread, after a batch: each camera's recent quality (its ``LevelTracker``; a level
        change is logged once: WARN when worse, INFO when better) and the collapse guard's recoveries
        (logged once each, WARN, with the reason and where the state went; the guard counts them)."""
        from .quality import LEVELS, OK, LevelTracker

        for camera, result in zip(cameras, results):
            recovery = getattr(result, "recovery", None)
            if recovery is not None:
                where = "the last healthy state" if recovery.to == "last_healthy" else "the source state"
                self.log.warning(f"collapse guard: {recovery.reason}; adapted state restored to {where} "
                                 f"(frame {recovery.frame}{', camera ' + camera if camera else ''})")
        estimator = pipe.quality
        if estimator is None:
            self._trackers, self._trackers_of, self._quality_now = {}, None, {}
            return
        window = int(self.cfg["quality_window"])
        if self._trackers_of != (id(estimator), window):  # a new estimator (reload, live change): start again
            self._trackers, self._trackers_of, self._quality_now = {}, (id(estimator), window), {}
        for camera, result in zip(cameras, results):
            q = getattr(result, "quality", None)
            if q is None:
                continue
            tracker = self._trackers.get(camera)
            if tracker is None:
                tracker = self._trackers[camera] = LevelTracker(estimator, window)
            change = tracker.update(q)
            seen = sum(tracker.counts.values())
            row = {"camera": camera, "estimate": tracker.mean, "level": tracker.level, "reason": tracker.reason,
                   "calibrated": estimator.calibrated, "frames": min(seen, window), "t": time.monotonic(),
                   "gain": tracker.gain, "kept": tracker.kept}
            self._quality_now = {**self._quality_now, camera: row}  # replaced whole: readers never see it change
            if change is None:
                continue
            old, new = change
            if old is None and new == OK:
                continue
            what = (f"quality{' of camera ' + camera if camera else ''} {LEVELS[new]}"
                    + (f" (was {LEVELS[old]})" if old is not None else "")
                    + f": mean estimate {row['estimate']:.2f}{source_text(row['gain'], row['kept'])}"
                    + f" over the last {row['frames']} frame(s)"
                    + ("" if estimator.calibrated else " (uncalibrated: mean confidence)")
                    + (f"; {tracker.reason}" if tracker.reason else ""))
            if old is None or new > old:
                self.log.warning(what)
            else:
                self.log.info(what)

    def quality_now(self) -> dict[str, dict[str, Any]]:
        """Per camera ('' for the one camera) its recent quality: ``estimate`` (mean over
        ``quality_window`` frames), ``level`` (index into ``runtime.quality.LEVELS``), ``reason`` (a
        forced ERROR), ``calibrated``, ``frames``, ``gain`` (mean estimated gain over the source model of
        those frames judged against it; NaN: none), ``kept`` (the share of the source model's classes
        the outputs keep, the newest judged; NaN: not known), ``t`` (``time.monotonic()`` of its last frame); empty
        with ``quality`` off or before a frame."""
        return self._quality_now

    def done(self, result, t_arrival: float, model_s: float, camera: str = "") -> None:
        """Book-keeping once a frame's outputs are published."""
        self.counters.done(result, t_arrival, model_s, camera)

    def frame_failed(self, err: BaseException) -> None:
        self.counters.frame_failed(err)

    # ================================================================== services
    def set_enabled(self, enabled: bool) -> None:
        pipe = self.pipeline
        if pipe is not None:
            pipe.set_enabled(enabled)

    def reset(self) -> tuple[bool, str]:
        with self.infer_lock:
            if self.state not in ("inactive", "active"):
                return False, "not configured"
            if self.pipeline is None:
                self.parked = None  # inactive: the next activate starts from the source state
            else:
                self.pipeline.reset()
        self.health.count("resets_requested")
        self.log.info("reset to the source state")
        return True, "reset to the source state"

    def request_save(self) -> Any:
        """Start ``save`` on its own thread; a concurrent.futures.Future of its (success, message).
        A request while a save runs shares that save's result, so a burst of calls costs one save."""
        import concurrent.futures

        with self._save_lock:
            running = self._save_future
            if running is not None and not running.done():
                self.health.count("saves_shared")
                return running
            future: concurrent.futures.Future = concurrent.futures.Future()
            self._save_future = future

        def run() -> None:
            try:
                future.set_result(self.save())
            except BaseException as err:  # never leave a caller waiting
                future.set_result((False, f"save failed: {type(err).__name__}: {one_line(err)}"))

        threading.Thread(target=run, name="tta_save", daemon=True).start()
        return future

    def save(self, path: Optional[Path] = None) -> tuple[bool, str]:
        """Write the adapted state atomically to ``path`` (default: ``save_path`` in ``state_dir``);
        (success, path or why not). Only inside ``state_dir``, and an existing file is replaced only
        if it is a node state (never a link, a FIFO, a device or another file)."""
        from .state import check_replaceable, save_state_file, save_target

        try:
            path = self.save_path() if path is None else save_target(str(path), self.state_dir, self.node_name)
        except ValueError as err:
            return self._refuse_save(str(err))
        refusal = check_replaceable(path)
        if refusal:
            return self._refuse_save(f"save_path {refusal}")
        with self.infer_lock:  # a snapshot (the engine's state_dict copies under its adaptation lock)
            pipe, parked = self.pipeline, self.parked
            if pipe is None and parked is None:
                return False, ("not configured" if self.state not in ("inactive", "active")
                               else "inactive and reset: nothing adapted to save")
            state = pipe.state_dict() if pipe is not None else parked
        try:  # written while frames go on being answered
            save_state_file(state, path)
        except Exception as err:
            message = f"save failed: {one_line(err)}"
            self.log.error(message)
            return False, message
        self.health.count("saves")
        self.log.info(f"adapted state saved to {path}")
        return True, str(path)

    def _refuse_save(self, reason: str) -> tuple[bool, str]:
        self.health.count("saves_refused")
        self.log.warning(f"save refused: {reason}", throttle=True)
        return False, f"save refused: {reason}"

    # ================================================================== diagnostics
    def diagnostics(self) -> dict[str, Any]:
        """Everything /diagnostics reports, as a dict (also handy in tests and tools)."""
        return self.report.values()

    def camera_diagnostics(self) -> dict[str, dict[str, Any]]:
        """Per camera (``Diagnostics.cameras``); empty with one camera."""
        return self.report.cameras()

    def status(self, last_bad_total: int) -> tuple[str, str, int, dict[str, Any]]:
        """(level 'ok'/'warn'/'error', message, bad-frame total, values) of the diagnostics status."""
        return self.report.status(last_bad_total)


def _listing(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())
