"""Replay a recorded camera bag through the adaptation, offline: the node's pipeline on every frame,
outputs written to a new bag with the input stamps, metrics when the bag carries ground truth.

The frames go through ``ros.pipeline.Pipeline``, built from the node's parameter table
(``ros.params``) and, if given, the node's own YAML file, so a replay computes what ``tta_node``
would publish for the same frames. The one difference is on purpose: by default the adaptation step
runs synchronously after each prediction (``background=False``, the benchmark's deterministic
streaming protocol: the prediction for a frame is still made before adapting on it), so a replay is
repeatable and independent of the machine's speed; ``background=True`` runs it on the adapter's
thread exactly as the node does.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import io as B

DEFAULT_TRUTH = "/camera/ground_truth/class_ids"
DEFAULT_WEATHER = "/weather"
PREFERRED_IMAGE = ("/camera/image_raw", "/camera/image_raw/compressed",
                   "/carla/ego_vehicle/rgb_front/image")
OUTPUT_NAMES = ("class_ids", "confidence", "overlay", "classification_json")


@dataclass
class ReplayOptions:
    topic: Optional[str] = None            # None: the bag's camera topic (found when unambiguous)
    truth_topic: Optional[str] = None      # None: DEFAULT_TRUTH when present; "" disables
    weather_topic: Optional[str] = None    # None: DEFAULT_WEATHER when present; "" disables
    prefix: str = "/tta"                   # output topics: <prefix>/class_ids, ...
    storage: str = "mcap"
    version: int = B.DEFAULT_BAG_VERSION
    overwrite: bool = False
    overlay: bool = False
    background: bool = False
    limit: Optional[int] = None
    skip_bad: bool = False
    progress: bool = True
    copy_truth: bool = True
    plot: bool = True


@dataclass
class ReplayResult:
    path: Path
    frames: int
    bad_frames: int
    wall_s: float
    model_s: float
    method: str
    table: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    stamps: list[int] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def model_fps(self) -> float:
        return self.frames / self.model_s if self.model_s > 0 else float("nan")


# ------------------------------------------------------------------------------------- config
def load_params_file(path: str | Path, node: str = "tta_node") -> dict[str, Any]:
    """The ``ros__parameters`` of ``node`` in a ROS parameter file (``config/adapt.yaml`` format)."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"parameter file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"parameter file {path} is not valid YAML: {err}") from None
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


def node_config(overrides: Optional[dict[str, Any]] = None, params_file: Optional[str | Path] = None,
                ) -> dict[str, Any]:
    """The node's configuration: defaults < parameter file < overrides; checked like the node does."""
    from tta_perception.ros import params as P

    cfg = P.defaults()
    layers = []
    if params_file:
        layers.append((f"parameter file {params_file}", load_params_file(params_file)))
    if overrides:
        layers.append(("option", {k: v for k, v in overrides.items() if v is not None}))
    for where, values in layers:
        unknown = sorted(k for k in values if k not in P.SPEC and k != "use_sim_time")
        if unknown:
            raise ValueError(f"{where}: unknown node parameter(s) {unknown}")
        for k, v in values.items():
            if k == "use_sim_time":
                continue
            if isinstance(v, tuple):
                v = list(v)
            if P.SPEC[k].type == "float" and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            cfg[k] = v
    problems = P.check_all(cfg)
    if problems:
        raise ValueError(problems[0])
    return cfg


def make_pipeline(cfg: dict[str, Any], background: bool = False):
    """``ros.pipeline.Pipeline`` for ``cfg``; with ``background=False`` its adapter steps inline."""
    from tta_perception.ros.pipeline import Pipeline, adapter_options

    pipe = Pipeline(cfg)
    if not background:
        from tta_perception.engine.streaming import StreamingAdapter

        enabled = pipe.adapter.enabled
        pipe.adapter.close()
        pipe.adapter = StreamingAdapter(pipe.method, **adapter_options(cfg, pipe.method), background=False)
        pipe.adapter.set_enabled(enabled)
    return pipe


# ------------------------------------------------------------------------------------- topics
def resolve_topics(reader: B.BagReader, opts: ReplayOptions) -> tuple[str, str, Optional[str], Optional[str]]:
    """(image topic, its type, truth topic or None, weather topic or None), with clear errors."""
    topic = opts.topic
    if not topic:
        candidates = [t for t in reader.find(B.IMAGE_TYPES)
                      if "ground_truth" not in t and not t.rstrip("/").endswith(OUTPUT_NAMES)]
        preferred = [t for t in PREFERRED_IMAGE if t in candidates]
        if preferred:
            topic = preferred[0]
        elif len(candidates) == 1:
            topic = candidates[0]
        elif not candidates:
            raise B.BagError(f"bag {reader.path}: no sensor_msgs/Image or CompressedImage topic; topics in "
                             f"the bag: {reader.describe()}")
        else:
            raise B.BagError(f"bag {reader.path}: several image topics ({', '.join(candidates)}); choose "
                             "one with --topic")
    msgtype = reader.check_topic(topic, B.IMAGE_TYPES, "image topic")
    if reader.count(topic) == 0:
        raise B.BagError(f"bag {reader.path}: image topic {topic!r} has no messages")
    truth = opts.truth_topic
    if truth is None:
        truth = DEFAULT_TRUTH if DEFAULT_TRUTH in reader.topics else ""
    if truth:
        reader.check_topic(truth, (B.TYPE_IMAGE,), "ground-truth topic")
    weather = opts.weather_topic
    if weather is None:
        weather = DEFAULT_WEATHER if DEFAULT_WEATHER in reader.topics else ""
    if weather:
        reader.check_topic(weather, (B.TYPE_STRING,), "weather topic")
    return topic, msgtype, truth or None, weather or None


def _out(prefix: str, name: str) -> str:
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    return f"{prefix}/{name}"


# ------------------------------------------------------------------------------------- replay
def replay(bag: str | Path, out: str | Path, cfg: dict[str, Any], opts: ReplayOptions = ReplayOptions(),
           pipeline=None) -> ReplayResult:
    """Run the pipeline over the image topic of ``bag``; write ``out`` (a new bag) atomically."""
    from tqdm.auto import tqdm

    from tta_perception.ros import image_codec as codec
    from tta_perception.ros.scoring import StreamScorer
    from tta_perception.ros.world_msgs import parse_weather

    bag_path = Path(bag).expanduser()
    out_path = Path(out).expanduser()
    if out_path.absolute() == bag_path.absolute() or bag_path.absolute() in out_path.absolute().parents:
        raise B.BagError(f"output {out_path} would overwrite or nest inside the input bag {bag_path}")
    B.check_output(out_path, opts.overwrite)  # before loading the model
    with B.BagReader(bag_path) as reader:
        topic, msgtype, truth_topic, weather_topic = resolve_topics(reader, opts)
        total = reader.count(topic) if opts.limit is None else min(reader.count(topic), int(opts.limit))
        pipe = pipeline if pipeline is not None else make_pipeline(cfg, background=opts.background)
        label = cfg["method"]
        scorer = StreamScorer([label], num_classes=len(pipe.class_names)) if truth_topic else None
        seg = pipe.task == "segmentation"
        names = {n: _out(opts.prefix, n) for n in OUTPUT_NAMES}
        frames = bad = seen = 0
        model_s = 0.0
        stamps: list[int] = []
        t_start = time.perf_counter()
        try:
            with B.BagWriter(out_path, storage=opts.storage, version=opts.version,
                             overwrite=opts.overwrite) as writer:
                if seg:
                    writer.add_topic(names["class_ids"], B.TYPE_IMAGE)
                    writer.add_topic(names["confidence"], B.TYPE_IMAGE)
                    if opts.overlay:
                        writer.add_topic(names["overlay"], B.TYPE_IMAGE)
                else:
                    writer.add_topic(names["classification_json"], B.TYPE_STRING)
                copy = [t for t in (truth_topic, weather_topic) if t and opts.copy_truth]
                for t in copy:
                    writer.add_topic(t, reader.topics[t][0])
                read = [topic] + [t for t in (truth_topic, weather_topic) if t]
                bar = tqdm(total=total, desc=f"replay {label}", unit="frame", disable=not opts.progress)
                last_log = None
                try:
                    for t, log_ns, msg in reader.messages(read):
                        if opts.limit is not None and frames >= opts.limit and (last_log is None or log_ns > last_log):
                            break  # past the last frame asked for (its truth/weather are read)
                        if t == topic:
                            if opts.limit is not None and frames >= opts.limit:
                                continue
                            seen += 1
                            last_log = log_ns
                            stamp = B.stamp_ns_of(msg)
                            try:
                                rgb = B.decode_image(msg, msgtype, int(cfg["max_image_pixels"]))
                            except codec.ImageError as err:
                                if opts.skip_bad:
                                    bad += 1
                                    continue
                                raise B.BagError(f"bag {bag_path}: topic {topic!r}: frame at stamp {stamp} "
                                                 f"cannot be used ({err.reason}): {err}") from None
                            t0 = time.perf_counter()
                            result = pipe.infer(rgb, output_size=cfg["output_size"], top_k=cfg["top_k"],
                                                overlay_alpha=cfg["overlay_alpha"], overlay=opts.overlay)
                            model_s += time.perf_counter() - t0
                            frame_id = msg.header.frame_id
                            if seg:
                                writer.write(names["class_ids"], log_ns,
                                             B.mono8_message(stamp, frame_id, result.class_ids))
                                writer.write(names["confidence"], log_ns,
                                             B.mono8_message(stamp, frame_id, result.confidence_u8))
                                if opts.overlay and result.overlay is not None:
                                    writer.write(names["overlay"], log_ns,
                                                 B.rgb_image_message(stamp, frame_id, result.overlay, "rgb8"))
                                if scorer is not None:
                                    scorer.add_prediction(label, stamp, result.class_ids)
                            else:
                                writer.write(names["classification_json"], log_ns,
                                             B.string_message(json.dumps(_classification(result, pipe, stamp,
                                                                                         frame_id))))
                            stamps.append(stamp)
                            frames += 1
                            bar.update(1)
                        elif t == truth_topic:
                            if t in copy:
                                writer.write(t, log_ns, msg)
                            if scorer is not None:
                                try:
                                    scorer.add_truth(B.stamp_ns_of(msg), B.decode_labels(msg))
                                except ValueError as err:
                                    raise B.BagError(f"bag {bag_path}: ground-truth topic {t!r}: {err}") from None
                        elif t == weather_topic:
                            if t in copy:
                                writer.write(t, log_ns, msg)
                            if scorer is not None:
                                try:
                                    stamp_w, payload = parse_weather(msg.data)
                                except ValueError as err:
                                    raise B.BagError(f"bag {bag_path}: weather topic {t!r}: {err}") from None
                                scorer.add_weather(stamp_w if stamp_w is not None else log_ns, payload)
                        if scorer is not None:
                            scorer.process()
                finally:
                    bar.close()
                if seen < total:  # a damaged chunk can end a storage file's data without an exception
                    raise B.BagError(f"bag {bag_path}: topic {topic!r}: only {seen} of the {total} messages "
                                     "listed in the bag's index could be read (corrupt or truncated file?)")
                if frames == 0:
                    raise B.BagError(f"bag {bag_path}: topic {topic!r}: no frame could be used "
                                     f"({bad} bad)")
                if opts.background:
                    pipe.adapter.wait_idle()
                wall = time.perf_counter() - t_start
                files: dict[str, str] = {}
                table: dict[str, Any] = {}
                if scorer is not None:
                    written = scorer.write(writer.tmp_path, prefix="replay_", plot=opts.plot,
                                           title=f"replay of {bag_path.name}")
                    table = scorer.table()
                    files = {k: str(out_path / p.name) for k, p in written.items()}
                info = {"bag": str(bag_path), "topic": topic, "message_type": msgtype,
                        "truth_topic": truth_topic, "weather_topic": weather_topic, "method": label,
                        "model": cfg["model"], "device": pipe.device, "frames": frames, "bad_frames": bad,
                        "wall_s": round(wall, 3), "fps": round(frames / wall, 3) if wall > 0 else None,
                        "model_fps": round(frames / model_s, 3) if model_s > 0 else None,
                        "background": opts.background, "window": cfg["window"],
                        "adapt_every": cfg["adapt_every"], "outputs": sorted(writer.counts), "table": table,
                        "adapter": _jsonable(pipe.stats())}
                _write_json(writer.extra_file("replay.json"), info)
                files["replay"] = str(out_path / "replay.json")
        finally:
            if pipeline is None:
                pipe.close()
    return ReplayResult(out_path, frames, bad, wall, model_s, label, table, files, stamps)


def _classification(result, pipe, stamp: int, frame_id: str) -> dict[str, Any]:
    """The node's ``classification_json`` payload."""
    names = pipe.class_names
    top = [{"class_id": i, "class_name": names[i], "score": s}
           for i, s in zip(result.topk_ids, result.topk_scores)]
    best = top[0] if top else {"class_id": -1, "class_name": "", "score": float("nan")}
    return {"stamp": {"sec": stamp // 1_000_000_000, "nanosec": stamp % 1_000_000_000}, "frame_id": frame_id,
            "label": best["class_id"], "class_name": best["class_name"], "score": best["score"], "top_k": top}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return str(obj)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    os.replace(tmp, path)
