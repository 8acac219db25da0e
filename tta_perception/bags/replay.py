"""Replay a recorded camera bag through the adaptation, offline: the node's pipeline on every frame,
outputs written to a new bag with the input stamps, metrics when the bag carries ground truth.

The frames go through ``runtime.pipeline.Pipeline``, built from the node's parameter table
(``runtime.params``) and, if given, the node's own YAML file, so a replay computes what ``tta_node``
would publish for the same frames. The one difference is on purpose: by default the adaptation step
runs synchronously after each prediction (``background=False``, the benchmark's deterministic
streaming protocol: the prediction for a frame is still made before adapting on it), so a replay is
repeatable and independent of the machine's speed; ``background=True`` runs it on the adapter's
thread exactly as the node does.

With the node's ``quality`` parameter (on by default) each frame's label-free quality estimate is written
as the node publishes it, a ``diagnostic_msgs/DiagnosticArray`` on ``<prefix>/quality`` (per camera
``<prefix>/C/quality``) under the frame's header; ``replay.json`` has its mean and the frames per level
(``quality``), and with ground truth ``replay_frames.csv`` the estimate and level beside each frame's
score, ``replay_summary.json`` its validation against the truth (``metrics.quality.validate``). With
``guard`` the collapse guard runs as in the node; its counters are in ``replay.json`` (``guard``), and
a checkpoint keeps its checks, counters and stored states, so a resumed replay equals an uninterrupted one.

Damaged input is found before the model is loaded (``io.BagReader`` checks MCAP CRCs and index,
sqlite3 structure): the replay stops with one line naming the bag, file, byte offset and topics, and
nothing is written; with ``skip_bad`` the damaged MCAP chunks are left out and counted
(``bad_chunks``, ``skipped_messages``, ``skipped_frames`` in the result and ``replay.json``). A run that
fails leaves no output, no temporary folder and no ``<out>.resume/`` unless that holds a finished
checkpoint to resume from.

Several cameras (``topics``, or by default every camera topic of a bag that has no single one, e.g.
``make-bag --cameras 2``): one shared model adapts over all of them in stamp order. Camera C is the
namespace of its topic (``/front/image_raw`` -> ``front``); its outputs go to ``<prefix>/C/class_ids``,
``<prefix>/C/confidence``, ...; its ground truth is ``/C/ground_truth/class_ids`` when the bag has it,
scored per camera and over all cameras (``replay_C_frames.csv``, ``replay_summary.json``). Grouping:
consecutive frames with the identical header stamp (at most one per camera) go through
``Pipeline.infer_batch`` together, as the node batches the newest frame of each camera; a frame whose
stamp differs from the group's starts a new group, so unsynchronised cameras run one frame at a time.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .. import weights_only
from ..atomic import atomic_torch_save, atomic_write_text, remove_orphans
from . import io as B

DEFAULT_TRUTH = "/camera/ground_truth/class_ids"
DEFAULT_WEATHER = "/weather"
PREFERRED_IMAGE = ("/camera/image_raw", "/camera/image_raw/compressed",
                   "/carla/ego_vehicle/rgb_front/image")
OUTPUT_NAMES = ("class_ids", "confidence", "overlay", "classification_json")
QUALITY_NAME = "quality"  # runtime.diagnostics.QUALITY_TOPIC: the node's per-frame quality, as DiagnosticArray
#: the node whose messages a replay writes (its quality statuses name it: a tta_node in the root namespace)
REPLAY_NODE = "/tta_node"


@dataclass
class ReplayOptions:
    topic: Optional[str] = None            # None: the bag's camera topic (found when unambiguous)
    topics: Optional[list[str]] = None     # several cameras, one shared model (module docstring)
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
    checkpoint_every: int = 0              # frames per checkpoint (0: none, the run cannot be resumed)
    resume: bool = False                   # continue an interrupted checkpointed run into the same out
    on_frames: Optional[Callable[[int, int], None]] = None  # (frames done, total) as the bar moves


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
    bad_chunks: int = 0                  # damaged chunks left out (skip_bad)
    skipped_messages: int = 0            # messages of the topics read that were in them, or undecodable
    skipped_frames: int = 0              # of which on the image topic
    damage: list[str] = field(default_factory=list)  # one line per damaged part left out
    cameras: dict[str, str] = field(default_factory=dict)  # several cameras: topic -> camera name
    camera_tables: dict[str, Any] = field(default_factory=dict)  # {method: {camera | overall: {phase: ...}}}
    camera_text: str = ""
    quality: dict[str, Any] = field(default_factory=dict)  # replay.json's 'quality' (empty with it off)
    guard: dict[str, Any] = field(default_factory=dict)    # the collapse guard's counters (empty with it off)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def model_fps(self) -> float:
        return self.frames / self.model_s if self.model_s > 0 else float("nan")


# ------------------------------------------------------------------------------------- config
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


def camera_of(topic: str) -> str:
    """The camera a topic belongs to: its namespace (``/front/image_raw`` -> ``front``,
    ``/front/image_raw/compressed`` -> ``front``); a topic in the root names itself."""
    parts = [p for p in topic.strip("/").split("/") if p]
    if parts and parts[-1] == "compressed":
        parts = parts[:-1]
    return "/".join(parts[:-1]) or "/".join(parts) or topic


def resolve_cameras(reader: B.BagReader, opts: ReplayOptions) -> Optional[dict[str, tuple[str, Optional[str]]]]:
    """Several cameras: ``{topic: (message type, truth topic or None)}`` in bag order; None for the
    one-topic replay (``--topic``, or a bag with one camera topic or a preferred one)."""
    topics = list(opts.topics or [])
    if opts.topic and topics:
        raise B.BagError("give either a topic or topics, not both")
    if not topics:
        if opts.topic:
            return None
        candidates = [t for t in reader.find(B.IMAGE_TYPES)
                      if "ground_truth" not in t and not t.rstrip("/").endswith(OUTPUT_NAMES)]
        if len(candidates) < 2 or any(t in candidates for t in PREFERRED_IMAGE):
            return None
        topics = candidates
    if len(topics) == 1:
        return None
    if opts.truth_topic:
        raise B.BagError(f"--truth-topic names the ground truth of one camera, and bag {reader.path} replays "
                         f"{', '.join(topics)}: each camera's is /<camera>/ground_truth/class_ids ('' ignores them)")
    names = [camera_of(t) for t in topics]
    if len(set(names)) != len(names) or len(set(topics)) != len(topics):
        raise B.BagError(f"bag {reader.path}: topics {', '.join(topics)} do not name distinct cameras "
                         f"({', '.join(names)}); give one topic per camera namespace")
    out = {}
    for t, cam in zip(topics, names):
        msgtype = reader.check_topic(t, B.IMAGE_TYPES, "image topic")
        if reader.count(t) == 0:
            raise B.BagError(f"bag {reader.path}: image topic {t!r} has no messages")
        truth = None
        if opts.truth_topic != "":
            truth = f"/{cam}/ground_truth/class_ids"
            truth = truth if truth in reader.topics else None
            if truth:
                reader.check_topic(truth, (B.TYPE_IMAGE,), "ground-truth topic")
        out[t] = (msgtype, truth)
    return out


def unused_settings(pipe, cfg: dict[str, Any], opts: ReplayOptions) -> list[str]:
    """Settings this replay would ignore, refused rather than dropped in silence (the node only warns:
    its parameters may be meant for another model or method)."""
    out = []
    if pipe.task != "segmentation":
        out += [f"{name}: a classifier's output has no map to draw or fuse" for name, on in
                (("--overlay", opts.overlay), ("--temporal-fusion", float(cfg["temporal_fusion"]))) if on]
    if str(cfg["bundle"]).strip() and not pipe.bundle:
        out.append(f"--bundle: method {cfg['method']!r} takes no phase-A bundle")
    return out


def _out(prefix: str, name: str) -> str:
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    return f"{prefix}/{name}"


# ------------------------------------------------------------------------------------- output
CHECKPOINT_FORMAT = "tta_perception.replay.checkpoint/1"


def resume_dir_of(out: str | Path) -> Path:
    """Where an interrupted replay into ``out`` keeps its finished parts and its checkpoint."""
    out = Path(out).expanduser().absolute()
    return out.parent / f"{out.name}.resume"


class _Sink:
    """Where the replay's messages go.

    Without checkpoints: straight into the output bag (written in a temporary folder, renamed into
    place when complete). With ``checkpoint_every``: into part bags under ``<out>.resume/``; at
    each checkpoint the current part is closed and the adaptation state saved next to it, so an
    interrupted replay continues from there (``resume``); when the input is done the parts are
    merged into the output bag and the folder is removed. Either way nothing half-written ever
    sits at the output path, and a failure before the first checkpoint removes ``<out>.resume/``
    (nothing there to resume, and its presence would make the next run ask for --resume).
    """

    def __init__(self, out_path: Path, opts: ReplayOptions, topics: dict[str, str], parts: list[str]):
        self.out_path, self.opts, self.topics = out_path, opts, topics
        self.parts = list(parts)
        self.dir = resume_dir_of(out_path)
        self.final: Optional[B.BagWriter] = None
        self.part: Optional[B.BagWriter] = None
        try:
            if opts.checkpoint_every > 0:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._open_part()
            else:
                self.final = self._writer(out_path, overwrite=opts.overwrite)
        except BaseException:
            self.abort()
            raise

    def _writer(self, path: Path, overwrite: bool = False) -> B.BagWriter:
        w = B.BagWriter(path, storage=self.opts.storage, version=self.opts.version, overwrite=overwrite)
        try:
            for t, ty in self.topics.items():
                w.add_topic(t, ty)
        except BaseException:
            w.abort()
            raise
        return w

    def _open_part(self) -> None:
        name = f"part_{len(self.parts):04d}"
        shutil.rmtree(self.dir / name, ignore_errors=True)  # left by a crash between commit and save
        self.part = self._writer(self.dir / name)
        self._part_name = name

    def write(self, topic: str, log_ns: int, msg: Any) -> None:
        (self.part or self.final).write(topic, log_ns, msg)

    def checkpoint(self, save: Any) -> None:
        """Close the current part, then ``save(parts)`` the state that goes with it."""
        if self.part is None:
            return
        self.part.commit()
        self.parts.append(self._part_name)
        save(list(self.parts))
        self._open_part()

    def finish(self) -> B.BagWriter:
        """The output bag, complete but not yet committed (side files can still be added)."""
        if self.final is not None:
            return self.final
        self.part.commit()
        self.parts.append(self._part_name)
        self.part = None
        self.final = self._writer(self.out_path, overwrite=self.opts.overwrite)
        for name in self.parts:
            with B.BagReader(self.dir / name) as reader:
                for t, log_ns, data in reader.messages(list(reader.topics), raw=True):
                    self.final.write_raw(t, log_ns, data)
        return self.final

    def commit(self) -> None:
        self.final.commit()
        if self.opts.checkpoint_every > 0:
            shutil.rmtree(self.dir, ignore_errors=True)

    def abort(self) -> None:
        """Drop what is not complete; finished parts and their checkpoint stay for ``resume``, and
        ``<out>.resume/`` goes when it holds no checkpoint."""
        for w in (self.part, self.final):
            if w is not None:
                w.abort()
        if self.opts.checkpoint_every > 0 and not (self.dir / "checkpoint.pt").is_file():
            shutil.rmtree(self.dir, ignore_errors=True)


def _fingerprint(bag_path: Path, topic: str, cfg: dict[str, Any], opts: ReplayOptions) -> dict[str, Any]:
    """What must not change between an interrupted replay and its resumption."""
    keep = {k: v for k, v in cfg.items() if k not in ("device",)}  # topic: one, or the cameras' joined
    return {"bag": str(bag_path.absolute()), "topic": topic, "cfg": json.dumps(_jsonable(keep), sort_keys=True),
            "limit": -1 if opts.limit is None else int(opts.limit), "checkpoint_every": int(opts.checkpoint_every),
            "storage": opts.storage, "version": int(opts.version), "prefix": opts.prefix,
            "overlay": bool(opts.overlay), "skip_bad": bool(opts.skip_bad), "copy_truth": bool(opts.copy_truth)}


def _load_checkpoint(path: Path, fingerprint: dict[str, Any], out_path: Path) -> Optional[dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        state = weights_only.load(path)
    except weights_only.WeightsOnlyError as err:
        raise B.BagError(f"checkpoint {path} of an interrupted replay cannot be read "
                         f"({err.reason}); pass --overwrite to start again") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise B.BagError(f"{path} is not a replay checkpoint; pass --overwrite to start again")
    old = state.get("fingerprint", {})
    diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
    if diff:
        raise B.BagError(f"the interrupted replay into {out_path} used other settings ({', '.join(diff)} "
                         "differ); rerun it with the same ones, or pass --overwrite to start again")
    return state


# ------------------------------------------------------------------------------------- replay
def replay(bag: str | Path, out: str | Path, cfg: dict[str, Any], opts: ReplayOptions = ReplayOptions(),
           pipeline=None) -> ReplayResult:
    """Run the pipeline over the image topic of ``bag``; write ``out`` (a new bag) atomically.

    With ``opts.checkpoint_every`` the run can be interrupted (Ctrl-C, a crash, a power cut) and
    continued with ``opts.resume``: the adaptation state, the frame window and the RNG are restored at
    the last checkpoint and the frames after it are replayed, so the output equals an uninterrupted
    run (inline adaptation; with ``background`` the steps depend on timing anyway).
    """
    import torch
    from tqdm.auto import tqdm

    from tta_perception.metrics import CameraScorers, StreamScorer
    from tta_perception.runtime import diagnostics as D
    from tta_perception.runtime import image_codec as codec
    from tta_perception.runtime.messages import parse_weather
    from tta_perception.runtime.pipeline import make_pipeline
    from tta_perception.runtime.postprocess import classification_payload

    bag_path = Path(bag).expanduser()
    out_path = Path(out).expanduser()
    if out_path.absolute() == bag_path.absolute() or bag_path.absolute() in out_path.absolute().parents:
        raise B.BagError(f"output {out_path} would overwrite or nest inside the input bag {bag_path}")
    B.check_output(out_path, opts.overwrite)  # before loading the model
    rdir = resume_dir_of(out_path)
    remove_orphans(rdir)  # checkpoint writes of a killed run (the checkpoint itself is kept)
    if rdir.exists() and not (rdir / "checkpoint.pt").is_file():
        shutil.rmtree(rdir, ignore_errors=True)  # killed before its first checkpoint: nothing to resume
    if rdir.exists():
        if opts.overwrite and not opts.resume:
            shutil.rmtree(rdir)
        elif not opts.resume:
            raise B.BagError(f"an interrupted replay into {out_path} left {rdir}: pass --resume to continue "
                             "it, or --overwrite to start again (nothing was written)")
    if opts.resume and opts.checkpoint_every <= 0:
        raise B.BagError("resume needs checkpoints: pass --checkpoint-every N (the same N as the "
                         "interrupted run)")
    with B.BagReader(bag_path, skip_damaged=opts.skip_bad) as reader:
        multi = resolve_cameras(reader, opts)
        if multi is None:
            one = replace(opts, topic=opts.topics[0], topics=None) if opts.topics else opts
            topic, msgtype, truth_topic, weather_topic = resolve_topics(reader, one)
            # image topic -> (camera, message type, truth topic); '' is the one camera (outputs <prefix>/...)
            cams = {topic: ("", msgtype, truth_topic)}
        else:
            _, _, _, weather_topic = resolve_topics(reader, ReplayOptions(
                topic=next(iter(multi)), truth_topic="", weather_topic=opts.weather_topic))
            cams = {t: (camera_of(t), ty, truth) for t, (ty, truth) in multi.items()}
            topic, msgtype, truth_topic = ",".join(cams), "", None
        truths = {truth: cam for cam, _, truth in cams.values() if truth}
        available = sum(reader.count(t) for t in cams)
        total = available if opts.limit is None else min(available, int(opts.limit))
        readable = available - sum(reader.skipped(t) for t in cams)  # the rest was in damaged chunks
        fingerprint = _fingerprint(bag_path, topic, cfg, opts)
        state = _load_checkpoint(rdir / "checkpoint.pt", fingerprint, out_path) if opts.resume else None
        pipe = pipeline if pipeline is not None else make_pipeline(cfg, background=opts.background)
        label = cfg["method"]
        if multi is None:
            scorer = StreamScorer([label], num_classes=len(pipe.class_names)) if truth_topic else None
            scorers = {"": scorer} if scorer is not None else {}
        else:
            scored = [cam for cam, _, truth in cams.values() if truth]
            scorer = CameraScorers(scored, [label], len(pipe.class_names)) if scored else None
            scorers = scorer.scorers if scorer is not None else {}
        seg = pipe.task == "segmentation"
        unused = unused_settings(pipe, cfg, opts)
        if unused:
            if pipeline is None:
                pipe.close()
            raise ValueError("; ".join(unused))
        names_of = {cam: {n: _out(opts.prefix, f"{cam}/{n}" if cam else n) for n in (*OUTPUT_NAMES, QUALITY_NAME)}
                    for cam, _, _ in cams.values()}
        judged = pipe.quality is not None  # the node's 'quality' parameter
        topics: dict[str, str] = {}
        for names in names_of.values():
            if judged:
                topics[names[QUALITY_NAME]] = B.TYPE_DIAGNOSTICS
            if seg:
                topics[names["class_ids"]] = B.TYPE_IMAGE
                topics[names["confidence"]] = B.TYPE_IMAGE
                if opts.overlay:
                    topics[names["overlay"]] = B.TYPE_IMAGE
            else:
                topics[names["classification_json"]] = B.TYPE_STRING
        copy = [t for t in (*truths, weather_topic) if t and opts.copy_truth]
        for t in copy:
            topics[t] = reader.topics[t][0]
        # quality: per camera [sum of the finite estimates, their count, frames OK, WARN, ERROR]
        run = {"frames": 0, "bad": 0, "seen": 0, "consumed": 0, "model_s": 0.0, "wall_s": 0.0, "stamps": [],
               "quality": {cam: [0.0, 0, 0, 0, 0] for cam, _, _ in cams.values()}}
        parts: list[str] = []
        if state is not None:
            run.update({k: state["progress"][k] for k in run})
            run["stamps"] = list(run["stamps"])
            parts = list(state["parts"])
            pipe.adapter.load_state_dict(state["adapter"])
            pipe.adapter.load_stream_state(state["stream"])
            if pipe.guard is not None and "guard" in state:
                pipe.guard.load_state_dict(state["guard"])
            torch.set_rng_state(state["rng"])
        done_preds = ({cam: _predictions_of(rdir, parts, names_of[cam]["class_ids"]) for cam in scorers}
                      if (state and scorer and seg) else {})
        done_quality = ({cam: _qualities_of(rdir, parts, names_of[cam][QUALITY_NAME]) for cam in scorers}
                        if (state and scorer and seg and judged) else {})
        t_start = time.perf_counter()
        wall_before = float(run["wall_s"])

        def save(parts_now: list[str]) -> None:
            run["wall_s"] = wall_before + time.perf_counter() - t_start
            ckpt = {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "parts": parts_now,
                    "progress": {k: (list(v) if isinstance(v, list) else v) for k, v in run.items()},
                    "adapter": pipe.adapter.state_dict(), "stream": pipe.adapter.stream_state(),
                    "rng": torch.get_rng_state()}
            if pipe.guard is not None:  # its checks, counters and stored states: a resumed run equals one run
                ckpt["guard"] = pipe.guard.state_dict()
            atomic_torch_save(ckpt, rdir / "checkpoint.pt")

        def feed_context(t: str, log_ns: int, msg: Any) -> None:
            """Ground truth and weather into the scorer."""
            if t in truths and truths[t] in scorers:
                try:
                    scorers[truths[t]].add_truth(B.stamp_ns_of(msg), B.decode_labels(msg))
                except ValueError as err:
                    raise B.BagError(f"bag {bag_path}: ground-truth topic {t!r}: {err}") from None
            elif t == weather_topic and scorer is not None:
                try:
                    stamp_w, payload = parse_weather(msg.data)
                except ValueError as err:
                    raise B.BagError(f"bag {bag_path}: weather topic {t!r}: {err}") from None
                scorer.add_weather(stamp_w if stamp_w is not None else log_ns, payload)

        group: dict[str, tuple[Any, int, Any]] = {}  # camera -> (rgb, log_ns, msg): frames with one stamp

        def flush(consumed: int) -> None:
            """Predict (and adapt on) the pending group in one pass, write its outputs, checkpoint."""
            if not group:
                return
            items = list(group.items())
            group.clear()
            t0 = time.perf_counter()
            kwargs = dict(output_size=cfg["output_size"], top_k=cfg["top_k"], overlay_alpha=cfg["overlay_alpha"],
                          overlay=opts.overlay)
            stamps = [B.stamp_ns_of(msg) * 1e-9 for _, (_, _, msg) in items]  # the flow chains' clock
            if multi is None:  # one camera: exactly the single-frame path
                results = [pipe.infer(items[0][1][0], stamp=stamps[0], **kwargs)]
            else:
                results = pipe.infer_batch([rgb for _, (rgb, _, _) in items], stamps=stamps,
                                           cameras=[cam for cam, _ in items], **kwargs)
            run["model_s"] += time.perf_counter() - t0
            before = run["frames"]
            for (cam, (_, log_ns, msg)), result in zip(items, results):
                stamp, frame_id, names = B.stamp_ns_of(msg), msg.header.frame_id, names_of[cam]
                if seg:
                    sink.write(names["class_ids"], log_ns, B.mono8_message(stamp, frame_id, result.class_ids))
                    sink.write(names["confidence"], log_ns, B.mono8_message(stamp, frame_id, result.confidence_u8))
                    if opts.overlay and result.overlay is not None:
                        sink.write(names["overlay"], log_ns,
                                   B.rgb_image_message(stamp, frame_id, result.overlay, "rgb8"))
                    if cam in scorers:
                        scorers[cam].add_prediction(label, stamp, result.class_ids)
                else:
                    sink.write(names["classification_json"], log_ns,
                               B.string_message(json.dumps(classification_payload(result, pipe.class_names, stamp,
                                                                                  frame_id))))
                q = result.quality
                if q is not None:  # what the node publishes on 'quality', under the frame's header
                    status = D.quality_status(REPLAY_NODE, cam, frame_id, q, pipe.quality_calibration)
                    sink.write(names[QUALITY_NAME], log_ns, B.diagnostic_array_message(stamp, frame_id, status))
                    tally = run["quality"][cam]
                    if np.isfinite(q.estimate):
                        tally[0] += float(q.estimate)
                        tally[1] += 1
                    tally[2 + int(q.level)] += 1
                    if seg and cam in scorers:  # as written (4 decimals): what an evaluator of the bag reads
                        scorers[cam].add_quality(label, stamp, float(dict(status["values"])["estimate"]), q.level)
                run["stamps"].append(stamp)
                run["frames"] += 1
            bar.update(len(items))
            run["consumed"] = consumed
            every = opts.checkpoint_every
            if every > 0 and run["frames"] // every > before // every:
                if opts.background:
                    pipe.adapter.wait_idle()
                sink.checkpoint(save)

        sink = None
        try:
            sink = _Sink(out_path, opts, topics, parts)
            read = list(cams) + [t for t in (*truths, weather_topic) if t]
            bar = tqdm(total=total, initial=run["seen"], desc=f"replay {label}", unit="frame",
                       disable=not opts.progress)
            if opts.on_frames is not None:
                bar = _Reported(bar, opts.on_frames)
            skip = int(run["consumed"])
            last_log = None
            try:
                for index, (t, log_ns, msg) in enumerate(reader.messages(read)):
                    if index < skip:  # done before the checkpoint: only the scorer catches up
                        if t in cams:
                            last_log = log_ns
                            cam = cams[t][0]
                            pred = done_preds.get(cam, {}).pop(B.stamp_ns_of(msg), None)
                            if pred is not None:
                                scorers[cam].add_prediction(label, B.stamp_ns_of(msg), pred)
                            q = done_quality.get(cam, {}).pop(B.stamp_ns_of(msg), None)
                            if q is not None:
                                scorers[cam].add_quality(label, B.stamp_ns_of(msg), *q)
                        else:
                            feed_context(t, log_ns, msg)
                        if scorer is not None:
                            scorer.process()
                        continue
                    if opts.limit is not None and run["seen"] >= opts.limit and (last_log is None or log_ns > last_log):
                        break  # past the last frame asked for (its truth/weather are read)
                    if t in cams:
                        cam, ty, _ = cams[t]
                        stamp = B.stamp_ns_of(msg)
                        if group and (cam in group or B.stamp_ns_of(next(iter(group.values()))[2]) != stamp):
                            flush(index)  # a new stamp (or the same camera again): the group is complete
                        run["consumed"] = index + 1
                        if opts.limit is not None and run["seen"] >= opts.limit:
                            continue
                        run["seen"] += 1
                        last_log = log_ns
                        try:
                            rgb = B.decode_image(msg, ty, int(cfg["max_image_pixels"]))
                        except codec.ImageError as err:
                            if opts.skip_bad:
                                run["bad"] += 1
                                bar.update(1)
                                continue
                            raise B.BagError(f"bag {bag_path}: topic {t!r}: frame at stamp {stamp} "
                                             f"cannot be used ({err.reason}): {err}") from None
                        group[cam] = (rgb, log_ns, msg)
                        if len(group) == len(cams):  # every camera's frame of this stamp
                            flush(index + 1)
                    else:
                        if not group:
                            run["consumed"] = index + 1
                        if t in copy:
                            sink.write(t, log_ns, msg)
                        feed_context(t, log_ns, msg)
                    if scorer is not None:
                        scorer.process()
                flush(int(run["consumed"]))
            finally:
                bar.close()
            if run["seen"] < min(total, readable):  # damage that neither the check nor rosbags noticed
                raise B.BagError(f"bag {bag_path}: topic {topic!r}: only {run['seen']} of the "
                                 f"{min(total, readable)} messages listed in the bag's index could be read "
                                 "(corrupt or truncated file?)")
            if run["frames"] == 0:
                raise B.BagError(f"bag {bag_path}: topic {topic!r}: no frame could be used "
                                 f"({run['bad']} bad)")
            if opts.background:
                pipe.adapter.wait_idle()
            wall = wall_before + time.perf_counter() - t_start
            writer = sink.finish()
            files: dict[str, str] = {}
            table: dict[str, Any] = {}
            camera_tables: dict[str, Any] = {}
            if scorer is not None:
                written = scorer.write(writer.tmp_path, prefix="replay_", plot=opts.plot,
                                       title=f"replay of {bag_path.name}")
                if multi is None:
                    table = scorer.table()
                else:
                    camera_tables = scorer.tables()
                    table = {m: t["overall"] for m, t in camera_tables.items()}
                files = {k: str(out_path / p.name) for k, p in written.items()}
            frames, model_s = int(run["frames"]), float(run["model_s"])
            quality = _quality_summary(run["quality"], pipe, multi is not None)
            if quality and scorer is not None:  # ground truth: how the estimate matched it
                validation = scorer.quality()
                if validation:
                    quality["validation"] = validation.get(label, {})
            guard = _jsonable(pipe.guard_stats()) if pipe.guard is not None else {}
            damage = {"bad_chunks": sum(d.what == "chunk" for d in reader.damage),
                      "skipped_messages": sum(d.count(read) for d in reader.damage) + reader.undecodable,
                      "skipped_frames": sum(reader.skipped(t) for t in cams),
                      "damage": [d.describe() for d in reader.damage]}
            info = {"bag": str(bag_path), "topic": topic, "message_type": msgtype,
                    "truth_topic": truth_topic, "weather_topic": weather_topic, "method": label,
                    "model": cfg["model"], "device": pipe.device, "frames": frames, "bad_frames": run["bad"],
                    "wall_s": round(wall, 3), "fps": round(frames / wall, 3) if wall > 0 else None,
                    "model_fps": round(frames / model_s, 3) if model_s > 0 else None,
                    "background": opts.background, "window": cfg["window"],
                    "adapt_every": cfg["adapt_every"], "predict_mode": pipe.adapter.predict_mode,
                    "bn_stats": pipe.adapter.bn_stats, "checkpoint_every": opts.checkpoint_every,
                    "resumed_from_frame": int(state["progress"]["frames"]) if state else None,
                    "outputs": sorted(writer.counts), "table": table, "adapter": _jsonable(pipe.stats()),
                    **({"quality": quality} if quality else {}), **({"guard": guard} if guard else {}),
                    **({"cameras": {t: c for t, (c, _, _) in cams.items()},
                        "truth_topics": {c: tr for _, (c, _, tr) in cams.items()},
                        "camera_tables": camera_tables, "grouping": "identical header stamps, one frame per "
                        "camera, through Pipeline.infer_batch"} if multi is not None else {}),
                    **damage, "integrity": reader.integrity()}
            _write_json(writer.extra_file("replay.json"), info)
            files["replay"] = str(out_path / "replay.json")
            sink.commit()
        except BaseException as err:
            if sink is not None:
                sink.abort()
            if isinstance(err, KeyboardInterrupt) and opts.checkpoint_every > 0 and (rdir / "checkpoint.pt").is_file():
                raise ReplayInterrupted(f"replay interrupted; {rdir} holds the output up to the last checkpoint: "
                                        "run the same command with --resume to continue") from None
            raise
        finally:
            if pipeline is None:
                pipe.close()
    return ReplayResult(out_path, frames, int(run["bad"]), wall, model_s, label, table, files, list(run["stamps"]),
                        damage["bad_chunks"], damage["skipped_messages"], damage["skipped_frames"], damage["damage"],
                        cameras={t: c for t, (c, _, _) in cams.items()} if multi is not None else {},
                        camera_tables=camera_tables, camera_text=scorer.text() if multi is not None and scorer else "",
                        quality=_jsonable(quality), guard=guard)


class _Reported:
    """A progress bar that also tells ``on_frames(done, total)`` (a caller's own progress display)."""

    def __init__(self, bar: Any, on_frames: Callable[[int, int], None]):
        self.bar, self.on_frames = bar, on_frames
        self.n, self.total = int(bar.n), int(bar.total or 0)  # a disabled bar does not count

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.n += int(n)
        self.on_frames(self.n, self.total)

    def close(self) -> None:
        self.bar.close()


class ReplayInterrupted(KeyboardInterrupt):
    """Ctrl-C during a checkpointed replay: what to run to continue it."""


def _predictions_of(rdir: Path, parts: list[str], class_topic: str) -> dict[int, np.ndarray]:
    """stamp -> class ids already written into the finished parts (the scorer catches up on them)."""
    out: dict[int, np.ndarray] = {}
    for name in parts:
        with B.BagReader(rdir / name) as reader:
            if class_topic not in reader.topics:
                continue
            for _, _, msg in reader.messages([class_topic]):
                out[B.stamp_ns_of(msg)] = B.decode_labels(msg)
    return out


def _qualities_of(rdir: Path, parts: list[str], topic: str) -> dict[int, tuple[float, int]]:
    """stamp -> (estimate, level) already written into the finished parts (the scorer catches up)."""
    from tta_perception.runtime.quality import LEVELS

    out: dict[int, tuple[float, int]] = {}
    for name in parts:
        with B.BagReader(rdir / name) as reader:
            if topic not in reader.topics:
                continue
            for _, _, msg in reader.messages([topic]):
                values = B.diagnostic_values(msg)
                out[B.stamp_ns_of(msg)] = (float(values.get("estimate", "nan")), LEVELS.index(values.get("level", "ERROR")))
    return out


def _quality_summary(tallies: dict[str, list], pipe: Any, multi: bool) -> dict[str, Any]:
    """replay.json's 'quality' of the per-camera tallies: the mean estimate, frames per level
    (and per camera with several), the calibration; empty with 'quality' off."""
    from tta_perception.runtime.quality import LEVELS

    if pipe.quality is None:
        return {}

    def one(t: list) -> dict[str, Any]:
        return {"mean_estimate": t[0] / t[1] if t[1] else None, "frames": int(sum(t[2:])),
                "levels": {name: int(t[2 + i]) for i, name in enumerate(LEVELS)}}

    total = [sum(t[i] for t in tallies.values()) for i in range(5)]
    out = {**one(total), "calibrated": bool(pipe.quality.calibrated), "calibration": pipe.quality_calibration,
           "warn_below": pipe.quality.warn_below, "error_below": pipe.quality.error_below}
    if multi:
        out["per_camera"] = {cam: one(t) for cam, t in tallies.items()}
    return out


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
    atomic_write_text(path, json.dumps(_jsonable(data), indent=2) + "\n")
