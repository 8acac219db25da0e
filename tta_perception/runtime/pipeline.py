"""One frame in, the outputs out: the source model, the engine's method and its streaming adapter for
one configuration of the node's parameters.

The node (``ros.tta_node``), the replay (``bags.replay``), ``node-bench`` and the weather loop all
run frames through :class:`Pipeline`: decode, then the frame path shared with the streaming benchmark
(``frame_path.FramePath``: flow, predict, fuse, the quality estimate and the collapse guard), then the
outputs (each ``Result`` carries its frame's ``Quality`` and ``Recovery``); so what the node publishes is what
the replay writes and what the benchmark scores. Heavy imports (torch, the engine, the models)
happen when a pipeline is built, i.e. in the node's configure transition.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import params as P
from .adapter import adapter_options, build_adapter
from .devices import fallback_warning, is_cuda_oom, resolve_device
from .errors import ConfigError, one_line
from .frame_path import FramePath
from .model_loader import EMBEDDED_FOR_TASK, default_bundle, load_model
from .postprocess import Result, classification_result, label_overlay, palette_for, segmentation_result
from .preprocess import frame_to_input
from .state import STATE_FORMAT, load_state_file, save_state_file, to_cpu

__all__ = ["Pipeline", "ConfigError", "Result", "make_pipeline"]


class Pipeline:
    """Model + engine method + streaming adapter for one configuration.

    ``infer`` runs on the caller's thread (the node's worker); adaptation happens on the adapter's
    background thread, so inference never waits for it (the engine's streaming protocol), unless
    ``background=False`` (the replay's and the benchmark's deterministic inline steps).
    """

    def __init__(self, cfg: dict[str, Any], background: bool = True, resume: bool = True):
        """``resume``: load the ``resume_from`` state (the node does at configure only; a reload
        starts from the source state)."""
        import torch

        from ..files import problem

        problems = P.check_all(cfg)
        if problems:
            raise ConfigError(problems[0])
        from ..engine import list_methods

        methods = sorted(list_methods())
        if cfg["method"] not in methods:
            raise ConfigError(f"parameter 'method' must be one of {', '.join(methods)}; "
                              f"got {cfg['method']!r}")
        cap = int(cfg["max_memory_mb"]) << 20  # no weights file larger than the memory budget
        bundle = cfg["bundle"].strip()
        reason = problem(bundle, "parameter 'bundle'", "weights", cap) if bundle else None
        if reason:
            raise ConfigError(reason + (" (write it with `tta-perception prepare`)"
                                        if reason.endswith("not found") else ""))
        if not resume:
            cfg = {**cfg, "resume_from": ""}
        reason = problem(cfg["resume_from"].strip(), "parameter 'resume_from'", "weights", cap) \
            if cfg["resume_from"].strip() else None
        if reason:
            raise ConfigError(reason)

        device = str(resolve_device(cfg["device"], "parameter 'device'"))
        try:
            self._build(cfg, device, fallback_warning(cfg["device"], device), background)
        except Exception as err:  # CUDA out of memory with device 'auto': the same on the CPU
            if device == "cpu" or cfg["device"] != "auto" or not is_cuda_oom(err):
                raise
            self.__dict__.clear()
            torch.cuda.empty_cache()
            self._build(cfg, "cpu", "device 'auto': CUDA out of memory, running on CPU", background)

    def _build(self, cfg: dict[str, Any], device: str, device_warning: Optional[str],
               background: bool) -> None:
        import torch

        from ..engine import build_method, method_class
        from ..engine.config import config_keys

        bundle, resume = cfg["bundle"].strip(), cfg["resume_from"].strip()
        self.device, self.device_warning = device, device_warning
        self.cfg = dict(cfg)  # what this pipeline was built from (the node reports it)
        loaded = load_model(cfg["model"], cfg["architecture"], device=self.device,
                            allow_import=bool(cfg["allow_code_architecture"]))
        self.model = loaded.model
        model_task = P.TASK_OF_MODEL[self.model.task]
        if cfg["task"] not in ("auto", model_task):
            embedded = EMBEDDED_FOR_TASK[next(k for k, v in P.TASK_OF_MODEL.items() if v == cfg["task"])]
            raise ConfigError(f"parameter 'task' is {cfg['task']!r} but model {cfg['model']!r} does "
                              f"{model_task} (the embedded {cfg['task']} model is {embedded!r})")
        self.task = model_task
        names = list(cfg["class_names"]) or list(getattr(self.model, "class_names", ()) or ())
        if not names:
            names = [f"class_{i}" for i in range(self.model.num_classes)]
        if len(names) != self.model.num_classes:
            raise ConfigError(f"parameter 'class_names' has {len(names)} names but the model has "
                              f"{self.model.num_classes} classes")
        self.class_names = names
        self.palette = palette_for(names)
        size = tuple(int(v) for v in cfg["input_size"])
        if size == (0, 0):  # the model's own size
            size = tuple(getattr(self.model, "input_size", None) or P.DEFAULT_INPUT_SIZE[model_task])
        self.input_size = (int(size[0]), int(size[1]))
        from .memory import check_budget

        problem = check_budget(cfg, self.model, input_size=self.input_size)  # before the method allocates
        if problem:
            raise ConfigError(problem)

        from ..engine.bundle import default_bundle_path

        cls = method_class(cfg["method"])
        keys = set(config_keys(cls.Config))
        overrides: dict[str, Any] = {}
        for param, candidates in (("lr", ("lr", "lr_entropy")), ("lr_consistency", ("lr_consistency",))):
            key = next((k for k in candidates if k in keys), None)
            if key and cfg[param] > 0:
                overrides[key] = float(cfg[param])
        self.warnings: list[str] = [self.device_warning] if self.device_warning else []
        self.bundle = ""
        if "bundle" in getattr(cls, "RESOURCES", ()):
            self.bundle, phase_a = self._bundle(bundle, cfg, loaded)
            if phase_a is not None:
                overrides["bundle"] = phase_a
            elif cfg["method"] == "dplot":  # the selected blocks come from phase A
                skipped = next((w for w in self.warnings if w.startswith("bundle ")), "")
                raise ConfigError(
                    f"method 'dplot' needs a phase-A bundle (the selected blocks) for {loaded.weights_desc}"
                    + (f" ({skipped})" if skipped else "") + ": write one with `tta-perception prepare` and "
                    f"set parameter 'bundle' (found by itself at {default_bundle_path(loaded.arch)}, relative "
                    "to the working directory)")
            if "warmup" in keys:  # RMT: the node has no source data for rmt.py's own warm-up
                overrides["warmup"] = "bundle"
        elif bundle:
            self.warnings.append(f"method {cfg['method']!r} takes no bundle: 'bundle' ignored")
        torch.manual_seed(int(cfg["seed"]))
        try:
            self.method = build_method(cfg["method"], self.model, None, **overrides)
        except (ValueError, FileNotFoundError) as err:  # bad bundle, missing blocks, bad option
            raise ConfigError(f"method {cfg['method']!r}: {one_line(err)}") from None
        # as the benchmark's streaming runner builds it, so the node's numbers are the benchmark's
        domains = None
        if cfg["domain_memory"]:
            from ..engine.domains import build_memory
            from .model_loader import domain_calibration

            domains = build_memory(domain_calibration(cfg["model"], cfg["architecture"], cfg["domain_calibration"]),
                                   max_domains=int(cfg["max_domains"]), threshold=float(cfg["domain_threshold"]),
                                   patience=int(cfg["domain_patience"]))
        self.adapter = build_adapter(self.method, **adapter_options(cfg, self.method), background=background,
                                     domains=domains)
        self.adapts = bool(getattr(self.method, "ADAPTS", True))  # False for 'source'
        # the frame's path after decoding (flow, predict, fuse), shared with the benchmark; it keeps
        # each camera's flow chain and output fusion (docs/video.md)
        self.frame_path = FramePath(self.adapter)
        self.set_temporal_fusion(float(cfg.get("temporal_fusion", 0.0)), cfg.get("temporal_fusion_mode"))
        # the quality estimate of each output and the collapse guard, computed in the frame path
        self.quality_calibration = ""
        self.warnings += self.set_quality(cfg)

        if resume:
            self.load_state(Path(os.path.expanduser(resume)))
        self.set_learning_rates(cfg["lr"], cfg["lr_consistency"])
        self.set_enabled(bool(cfg["enable"]))
        self.set_guard(cfg)  # after the resumed state: its first healthy snapshot is taken from what runs

    def _bundle(self, given: str, cfg: dict[str, Any], loaded) -> tuple[str, Any]:
        """(path, Bundle) of the phase-A bundle for ``loaded``: the one named by ``bundle``, else the
        default one (``default_bundle``); one prepared for other weights is refused when named and
        skipped with a warning when found by default. ("", None) without one."""
        from ..engine.bundle import BundleError, load_bundle
        from .model_loader import bundle_mismatch


        path = os.path.expanduser(given) if given else \
            (default_bundle(cfg["model"], cfg["architecture"], loaded.arch) or "")
        if not path:
            return "", None
        try:
            phase_a = load_bundle(path)
        except (FileNotFoundError, BundleError) as err:
            raise ConfigError(f"parameter 'bundle' (method {cfg['method']!r}): {one_line(err)}") from None
        problem = bundle_mismatch(phase_a.metadata, loaded)
        if problem and given:
            raise ConfigError(f"parameter 'bundle': {path!r} {problem}")
        if problem:
            self.warnings.append(f"bundle {path!r} not used: {problem}")
            return "", None
        return path, phase_a

    @property
    def temporal_fusion(self) -> float:
        return self.frame_path.fusion

    @property
    def temporal_fusion_mode(self) -> str:
        return self.frame_path.fusion_mode

    def set_temporal_fusion(self, weight: float, mode: Optional[str] = None) -> None:
        """Weight of the past in the published prediction (``temporal_fusion``, live; 0 = off) and its
        mode (``temporal_fusion_mode``; None: unchanged). Classification outputs are never fused (one
        label per frame, no pixels to follow)."""
        weight = float(weight)
        if weight and self.task != "segmentation":
            self.warnings.append("temporal_fusion applies to segmentation only: ignored")
            weight = 0.0
        self.frame_path.set_fusion(weight, mode)

    @property
    def quality(self) -> Any:
        """The ``runtime.quality.QualityEstimator`` of the outputs (None: ``quality`` off)."""
        return self.frame_path.quality

    @property
    def guard(self) -> Any:
        """The ``runtime.guard.CollapseGuard`` (None: ``guard`` off)."""
        return self.frame_path.guard

    def set_quality(self, cfg: dict[str, Any]) -> list[str]:
        """The quality estimator of the parameters ``quality*`` (the method's calibration, the level
        thresholds) and its source reference (``quality_source_every``), or none with ``quality``
        off; what to log once (an uncalibrated model). ConfigError for a calibration that cannot be
        used or thresholds that do not go together."""
        from .quality import QualityEstimator, load_calibration
        from .reference import build_reference

        if not cfg["quality"]:
            self.frame_path.quality, self.frame_path.reference, self.quality_calibration = None, None, ""
            return []
        cal, where = load_calibration(cfg["model"], cfg["method"], str(cfg["quality_calibration"]).strip())
        try:
            estimator = QualityEstimator(cal, P.threshold_or_none(cfg["quality_warn_below"]),
                                         P.threshold_or_none(cfg["quality_error_below"]),
                                         gain_warn_below=float(cfg["quality_gain_warn_below"]),
                                         min_kept=float(cfg["quality_min_kept"]))
        except ValueError as err:
            raise ConfigError(f"parameters 'quality_warn_below' / 'quality_error_below': {one_line(err)}") from None
        self.frame_path.quality = estimator
        self.frame_path.reference = build_reference(self.adapter, cfg["model"], int(cfg["quality_source_every"]),
                                                    share=self._frozen_source())
        self.quality_calibration = where if cal is not None else "none (uncalibrated: the mean confidence)"
        return [] if cal is not None else [f"quality: {where}"]

    def set_guard(self, cfg: dict[str, Any]) -> None:
        """The collapse guard of the parameters ``guard*`` (a new one: its checks start again; the
        adapted state is kept), or none with ``guard`` off. The source model's reliability is judged
        with the source calibration of the model (``load_calibration(model, 'source')``); the method's
        calibration (as the quality estimate reads it) gives ``guard_min_kept: -1`` its value."""
        from .guard import build_guard

        if not cfg["guard"]:
            self.frame_path.guard = None
            return
        try:
            settings = P.guard_settings(cfg)
        except ValueError as err:
            raise ConfigError(f"parameters 'guard_*': {one_line(err)}") from None
        self.frame_path.guard = build_guard(self.adapter, settings, cfg["model"], cfg["method"],
                                            str(cfg["quality_calibration"]).strip(), source=self._frozen_source())

    def _frozen_source(self) -> Any:
        """The frozen source model the quality's reference or the guard already holds (None: neither),
        so that the process keeps one copy."""
        ref, guard = self.frame_path.reference, self.frame_path.guard
        return ref.model if ref is not None else getattr(guard, "_source", None) if guard is not None else None

    def reset(self) -> None:
        """Back to the source state (the ``~/reset`` service): the adapter's, and every camera's chain
        broken (no past of the old state fused into the next frame, nothing it kept judged)."""
        self.adapter.reset()
        self.frame_path.reset()

    def set_enabled(self, enabled: bool) -> None:
        """Adaptation on/off; a method that does not adapt ('source') never runs pointless steps."""
        self.adapter.set_enabled(bool(enabled) and self.adapts)

    # ---- state
    def state_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "method": type(self.method).__name__,
                "class_names": self.class_names, "adapter": self.adapter.state_dict()}

    def load_state(self, path: Path) -> None:
        """``resume_from``: the adapted state a ``~/save`` wrote."""
        try:
            self.load_state_dict(load_state_file(path))
        except Exception as err:
            raise ConfigError(f"parameter 'resume_from': {str(path)!r} cannot be loaded: "
                              f"{one_line(err)}") from None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError("not a tta_node state (format marker missing)")
        self.adapter.load_state_dict(state["adapter"])

    def cpu_state_dict(self) -> dict[str, Any]:
        """The whole adapted state with tensors on the CPU (kept while the node is inactive)."""
        return to_cpu(self.state_dict())

    def save_state(self, path: Path) -> None:
        save_state_file(self.state_dict(), path)

    def set_learning_rates(self, lr: float, lr_consistency: float) -> list[str]:
        """Apply non-zero learning rates to the method's optimisers at run time.

        ``lr_consistency`` goes to an optimiser named ``consistency`` (DPLOT's step on all
        parameters), ``lr`` to every other one. The method's source snapshot is patched too, so a
        reset (by the service or by collapse detection) keeps the rates the user set.
        """
        changed = []
        for name, opt in _optimizers(self.method).items():
            value = lr_consistency if name == "consistency" else lr
            if not value or value <= 0:
                continue
            for group in opt.param_groups:
                group["lr"] = float(value)
            snapshot = getattr(self.method, "_source", None)
            try:
                for group in snapshot["optimizers"][name]["param_groups"]:
                    group["lr"] = float(value)
            except (TypeError, KeyError):
                pass
            changed.append(f"{name}={value:g}")
        return changed

    def close(self) -> None:
        self.adapter.close()

    # ---- frames
    def to_input(self, rgb: np.ndarray):
        """(H, W, 3) uint8 -> (3, h, w) float in [0, 1] at the model size (bilinear, antialiased)."""
        return frame_to_input(rgb, self.input_size, self.device)

    def infer(self, rgb: np.ndarray, output_size: str = "input", top_k: int = 5,
              overlay_alpha: float = 0.5, overlay: bool = True, confidence_float: bool = False,
              confidence: bool = True, stamp: Optional[float] = None, camera: str = "") -> Result:
        """Predict one frame. ``confidence`` / ``overlay`` False skip those maps (the node asks for
        them only while someone subscribes); the mean confidence and entropy for diagnostics then
        come from every 8th pixel. Video (``temporal_fusion``, DPLOT ``temporal_pl``): frames of one
        ``camera`` are consecutive; ``stamp`` (seconds; None: the arrival time) breaks the chain at
        a gap (docs/video.md)."""
        return self.infer_batch([rgb], output_size=output_size, top_k=top_k, overlay_alpha=overlay_alpha,
                                overlay=overlay, confidence_float=confidence_float, confidence=confidence,
                                stamps=[stamp], cameras=[camera])[0]

    def infer_batch(self, rgbs: list[np.ndarray], adapt: Optional[list[bool]] = None,
                    output_size: str = "input", top_k: int = 5, overlay_alpha: float = 0.5,
                    overlay: Any = True, confidence_float: bool = False, confidence: Any = True,
                    stamps: Optional[list[Optional[float]]] = None,
                    cameras: Optional[list[str]] = None) -> list[Result]:
        """Predict the newest frame of several cameras in one forward pass (frames of any size and
        encoding: each is resized to the model's input). ``adapt[i]``: whether frame i feeds the
        adaptation window (default: all). ``overlay``/``confidence``: one flag, or one per frame
        (a camera whose map nobody reads does not compute it). ``cameras``/``stamps``: each frame's
        camera and stamp, for its own flow chain and fusion (``temporal_fusion``)."""
        import time

        import torch

        n = len(rgbs)
        now = time.monotonic()  # the stamp of a frame without one: its arrival
        stamps = [now if s is None else s for s in (stamps or [None] * n)]
        xs = [self.to_input(rgb) for rgb in rgbs]
        done = self.frame_path.run(torch.stack(xs), cameras, stamps, adapt)
        flag = lambda v, i: v[i] if isinstance(v, (list, tuple)) else v  # noqa: E731
        results = [self.postprocess(done[i].output, rgbs[i], xs[i], output_size=output_size, top_k=top_k,
                                    overlay_alpha=overlay_alpha, overlay=flag(overlay, i),
                                    confidence_float=confidence_float, confidence=flag(confidence, i))
                   for i in range(n)]
        for result, record in zip(results, done):  # what the frame path judged of each frame
            result.quality, result.recovery = record.quality, record.recovery
        return results

    def postprocess(self, logits, rgb: np.ndarray, x, output_size: str = "input", top_k: int = 5,
                    overlay_alpha: float = 0.5, overlay: bool = True, confidence_float: bool = False,
                    confidence: bool = True) -> Result:
        """Logits of one frame -> the outputs (``infer`` after the model; timed on its own by
        ``node-bench``); segmentation maps at the input size (``output_size='input'``, pixel-aligned
        with the camera) or at the model size."""
        logits = logits.detach().float()
        if logits.dim() in (2, 4):  # tolerate a batch axis of one
            logits = logits[0]
        if self.task == "classification":
            return classification_result(logits, top_k)
        if output_size == "input":
            out_size, base = rgb.shape[:2], (rgb if overlay else None)
        else:
            out_size = self.input_size
            base = (x.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8) if overlay else None
        result = segmentation_result(logits, out_size, base, self.palette, overlay_alpha=overlay_alpha,
                                     overlay=overlay, confidence_float=confidence_float, confidence=confidence)
        domain = self.domain()
        if domain is not None and result.overlay is not None:
            label_overlay(result.overlay, f"domain {domain['id']}")
        return result

    def domain(self) -> Optional[dict[str, Any]]:
        """Domain memory's view of the last frame (None when it is off): id, new, distance (in
        threshold units), frames in the domain."""
        mem = getattr(self.adapter, "domains", None)
        d = mem.last if mem is not None else None
        if d is None:
            return None
        return {"id": d.domain, "new": bool(d.new), "switched": bool(d.switched), "distance": round(d.distance, 4),
                "frames_in_domain": d.frames_in_domain, "known": len(mem.detector.centroids)}

    def selected_blocks(self) -> list[str]:
        """Blocks the method adapts selectively (DPLOT's domain-specific blocks), if any."""
        for owner, attr in ((self.method, "blocks"), (getattr(self.method, "cfg", None), "blocks")):
            blocks = getattr(owner, attr, None)
            if blocks:
                return [str(b) for b in blocks]
        return []

    def stats(self) -> dict[str, Any]:
        try:
            s = dict(self.adapter.stats())
        except Exception:  # statistics must never take the node down
            s = {}
        return s

    def guard_stats(self) -> dict[str, Any]:
        """The collapse guard's counters and last check (empty while it is off)."""
        guard = self.guard
        try:
            return dict(guard.stats()) if guard is not None else {}
        except Exception:  # statistics must never take the node down
            return {}


def make_pipeline(cfg: dict[str, Any], background: bool = False) -> Pipeline:
    """A pipeline for ``cfg``; ``background=False`` steps inline after each prediction (the replay's
    and the benchmark's repeatable protocol; the prediction is still made before adapting)."""
    return Pipeline(cfg, background=background)


def _optimizers(method) -> dict[str, Any]:
    """The method's optimisers by name (the engine keeps them in ``method.optimizers``)."""
    found = getattr(method, "optimizers", None)
    if isinstance(found, dict):
        return dict(found)
    single = getattr(method, "optimizer", None)
    return {"opt": single} if single is not None else {}
