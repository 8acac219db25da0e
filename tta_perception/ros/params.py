"""The node's parameters: one table, used to declare them, to check them and to test config/adapt.yaml.

Pure Python (no rclpy) so the checks run anywhere. Each parameter says *when* a change takes effect:

- ``live``: applied at once (``enable``, learning rates, output options);
- ``reload``: the model/method is rebuilt in the background while the node keeps running (frames that
  arrive meanwhile are counted as ``frames_during_reload``);
- ``subscription``: the image subscription is recreated (topic type, QoS);
- ``startup``: read at configure only (a change needs cleanup + configure, or a restart).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

TASKS = ("auto", "segmentation", "classification")
TASK_OF_MODEL = {"seg": "segmentation", "cls": "classification"}
RELIABILITY = ("best_effort", "reliable", "system_default")
OUTPUT_SIZES = ("input", "model")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
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


SPECS: tuple[Spec, ...] = (
    # --- what runs ---
    Spec("task", "auto", "str", "Output task: auto (from the model), segmentation or classification.",
         "reload", choices=TASKS),
    Spec("model", "driveseg", "str",
         "Embedded source model name (driveseg, signnet) or path to a checkpoint (.pt state dict) "
         "for the architecture given in 'architecture'.", "reload"),
    Spec("architecture", "", "str",
         "Architecture of a checkpoint given as 'model': a registered model name or 'module:function' "
         "returning a TTAModel. Empty: 'model' is an embedded name.", "reload"),
    Spec("bundle", "", "str", "DPLOT bundle written by `tta-perception prepare` (selected blocks, "
         "warmed-up teacher); empty: the method's defaults.", "reload"),
    Spec("method", "dplot", "str", "Adaptation method of the engine (source, norm, tent, eata, sar, "
         "cotta, rmt, dplot).", "reload"),
    Spec("device", "auto", "str", "auto (CUDA when present, else CPU with a warning; CPU also after "
         "CUDA out-of-memory), cpu, cuda or cuda:N.", "reload"),
    Spec("input_size", [128, 256], "int_array", "Model input [height, width]; frames are resized to it.",
         "reload", range=(8, 4096), length=2),
    Spec("class_names", [], "str_array", "Class names to publish; empty: the model's own.", "reload"),
    Spec("seed", 0, "int", "Seed of the adaptation (augmentations, noise).", "reload",
         range=(0, 2**31 - 1)),
    # --- adaptation ---
    Spec("enable", True, "bool", "Adaptation on/off at run time; inference goes on when off.", "live"),
    Spec("lr", 0.0, "float", "Learning rate of the (first) adaptation optimiser; 0: method default "
         "(DPLOT: entropy step on the selected blocks, 1e-3).", "live", range=(0.0, 1.0)),
    Spec("lr_consistency", 0.0, "float", "Learning rate of DPLOT's consistency step on all parameters; "
         "0: method default (1e-4). Ignored by single-optimiser methods.", "live", range=(0.0, 1.0)),
    Spec("window", 16, "int", "Frames in the sliding window the background adaptation steps on.",
         "reload", range=(1, 256)),
    Spec("adapt_every", 1, "int", "Adapt once every N processed frames.", "reload", range=(1, 10000)),
    Spec("resume_from", "", "str", "Adapted state written by ~/save, loaded at configure so an adapted "
         "model survives a restart; empty: start from the source state.", "startup"),
    Spec("save_path", "", "str", "Where ~/save writes the adapted state (atomically); empty: "
         "$ROS_HOME/tta_perception/<node>.pt.", "live"),
    # --- input ---
    Spec("compressed", False, "bool", "Subscribe to sensor_msgs/CompressedImage on 'image/compressed' "
         "instead of sensor_msgs/Image on 'image'.", "subscription"),
    Spec("qos_reliability", "best_effort", "str", "Image subscription reliability; best_effort matches "
         "both kinds of publisher, use reliable only if the publisher needs it.", "subscription",
         choices=RELIABILITY),
    Spec("qos_depth", 5, "int", "Image subscription queue depth (keep last).", "subscription",
         range=(1, 100)),
    Spec("max_image_pixels", 4096 * 4096, "int", "Frames with more pixels are rejected (huge_image).",
         "live", range=(1, 2**31 - 1)),
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
    Spec("diagnostics_period", 1.0, "float", "Seconds between /diagnostics messages.", "startup",
         range=(0.05, 60.0)),
    Spec("autostart", True, "bool", "Configure and activate by itself at start-up (as yolo_ros); false: "
         "wait for lifecycle transitions.", "startup"),
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
    return None


def check_all(cfg: dict[str, Any], methods: Optional[Iterable[str]] = None) -> list[str]:
    """All problems of a full configuration, in declaration order."""
    methods = list(methods) if methods is not None else None
    return [m for s in SPECS if (m := check(s.name, cfg.get(s.name, s.default), methods))]
