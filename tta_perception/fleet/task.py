"""One bag of a fleet run, in whatever process runs it (a Ray worker, or this one without Ray).

:func:`run_job` replays the bag with ``bags.replay.replay`` (the same code and options as
``tta-perception replay``, so the output bag and its metrics files are the replay's, bit for bit at
the same torch thread count), then scores it for the fleet's tables (:func:`score_bag`): mIoU and
label flicker per weather phase with the phase's confusion matrix and flicker pixel counts (so bags
can be pooled), the weather tags the bag carries, the adaptation counters, the quality estimate (its
mean and frames per level, from ``replay.json``) and the collapse guard's counters, times and the
process's peak memory. It never raises for a bad bag: the record says ``failed`` with one line why.

A retried task (its worker died) continues from the replay's last checkpoint when there is one; the
result is the same as an uninterrupted run (``replay --resume``).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .cluster import pinned_threads

RECORD_FORMAT = "tta_perception.fleet.bag/1"
#: counters of the run's adaptation kept in the record (``Pipeline.stats()``; timings are not)
COUNTERS = ("frames", "adapt_requests", "adapt_steps", "coalesced", "errors", "oom_window_reductions",
            "oom_cpu_fallbacks")
METHOD_COUNTERS = ("steps", "updates", "nan_skips", "resets", "collapse_resets", "method_resets",
                   "filtered_steps")


@dataclass
class BagJob:
    """Everything a task needs, as plain data (it travels to a Ray worker)."""

    bag: str
    name: str
    method: str
    cfg: dict[str, Any]                  # the node configuration (runtime.params), method included
    replay: dict[str, Any]               # bags.replay.ReplayOptions fields
    out_bag: str                         # where the replay writes its bag
    keep_output: bool = True             # False: the bag is removed once scored (--no-output-bags)
    threads: int = 1                     # torch threads of the task (the same count gives the same bits)
    extra: dict[str, Any] = field(default_factory=dict)  # what the record repeats (e.g. the job's key)


# ---------------------------------------------------------------------------------------- helpers
def _status_kb(key: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Start the process's peak resident set (VmHWM) afresh (Linux ``clear_refs``); False where it
    cannot be reset (then the peak covers the process's whole life)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> Optional[float]:
    """Peak resident set of this process in MB (VmHWM, else ``ru_maxrss``)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        try:
            import resource

            kb = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        except (ImportError, OSError):
            return None
    return kb / 1024.0


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (ValueError, FileNotFoundError)) else f"{type(err).__name__}: {text}"


def _counters(stats: dict[str, Any]) -> dict[str, Any]:
    out = {k: stats[k] for k in COUNTERS if k in stats}
    method = stats.get("method") or {}
    out.update({f"method_{k}": method[k] for k in METHOD_COUNTERS if k in method})
    return out


def _quality(info: dict[str, Any]) -> dict[str, Any]:
    """The bag's quality estimate from its ``replay.json``: the mean estimate, frames per level, whether
    it is calibrated and, with ground truth, how it matched it (empty with the node's ``quality`` off)."""
    q = info.get("quality") or {}
    keep = ("mean_estimate", "frames", "levels", "calibrated", "calibration", "validation")
    return {k: q[k] for k in keep if k in q}


def _class_topic(prefix: str, camera: str) -> str:
    return "/" + "/".join(p for p in (prefix.strip("/"), camera, "class_ids") if p)


# ---------------------------------------------------------------------------------------- scoring
def score_bag(bag: str | Path, out_bag: str | Path, info: dict[str, Any], num_classes: Optional[int],
              prefix: str = "/tta", skip_bad: bool = False, max_pixels: Optional[int] = None) -> dict[str, Any]:
    """The fleet's scores of a replayed bag: ``tags`` (the weather phases of ``/weather``, in order),
    and with ground truth ``table`` ({phase | all: {miou, acc, frames, flicker}}), ``confusion``
    ({phase: matrix}) and ``flicker_pixels`` ({phase: [changed, counted]}).

    The input bag gives the camera frames (their optical flow, as the evaluator computes it), the
    ground truth and the weather; the replay's bag gives the predictions; ``info`` is its
    ``replay.json`` (topics, method). Scored with ``metrics.StreamScorer`` (several cameras:
    ``CameraScorers``, pooled), so the mIoU equals the replay's own. Without ground truth (or
    ``num_classes``, which the replay's ``replay_summary.json`` records) only the tags."""
    from ..bags import io as B
    from ..engine.temporal import MotionLog
    from ..metrics import CameraScorers, DomainScores, Flicker, StreamScorer
    from ..runtime.messages import parse_weather

    method = str(info["method"])
    if info.get("cameras"):
        cams = {t: c for t, c in info["cameras"].items()}
        truths = {tr: c for c, tr in (info.get("truth_topics") or {}).items() if tr}
    else:
        cams = {str(info["topic"]): ""}
        truths = {info["truth_topic"]: ""} if info.get("truth_topic") else {}
    weather_topic = info.get("weather_topic")
    tags: list[str] = []
    seg = any(t.endswith("class_ids") for t in info.get("outputs", []))
    if not (truths and seg and num_classes):  # the weather tags only
        if weather_topic:
            with B.BagReader(bag, skip_damaged=skip_bad) as reader:
                for _, _, msg in reader.messages([weather_topic]):
                    _tag(tags, msg.data, parse_weather)
        return {"tags": tags}
    motions = {c: MotionLog() for c in cams.values()}
    n = int(num_classes)
    if info.get("cameras"):
        multi = CameraScorers([c for c in cams.values() if c in truths.values()], [method], n, videos=motions)
        scorers = multi.scorers
    else:
        multi = None
        scorers = {"": StreamScorer([method], n, video=motions[""])}
    pred_topics = {_class_topic(prefix, c): c for c in cams.values()}
    with B.BagReader(out_bag) as out_reader:
        missing = [t for t in pred_topics if t not in out_reader.topics]
        if missing:
            raise ValueError(f"replay output {out_bag} has no {', '.join(missing)}")
        preds = iter(out_reader.messages(list(pred_topics)))
        pending: dict[str, tuple[int, Any]] = {}  # camera -> (stamp, class ids) read ahead

        def prediction(cam: str, stamp: int) -> Any:
            """The prediction of ``cam`` at ``stamp`` (None when the replay skipped that frame)."""
            while True:
                got = pending.get(cam)
                if got is not None and got[0] >= stamp:
                    if got[0] == stamp:
                        del pending[cam]
                        return got[1]
                    return None
                try:
                    t, _, msg = next(preds)
                except StopIteration:
                    return None
                pending[pred_topics[t]] = (B.stamp_ns_of(msg), B.decode_labels(msg))

        read = list(cams) + list(truths) + ([weather_topic] if weather_topic else [])
        with B.BagReader(bag, skip_damaged=skip_bad) as reader:
            for t, log_ns, msg in reader.messages(read):
                if t in cams:
                    cam, stamp = cams[t], B.stamp_ns_of(msg)
                    pred = prediction(cam, stamp)
                    if pred is None:
                        continue
                    try:
                        rgb = B.decode_image(msg, reader.topics[t][0], max_pixels)
                    except ValueError:
                        continue  # replay counted it (--skip-bad)
                    motions[cam].add(stamp, rgb)
                    if cam in scorers:
                        scorers[cam].add_prediction(method, stamp, pred)
                elif t in truths:
                    if truths[t] in scorers:
                        scorers[truths[t]].add_truth(B.stamp_ns_of(msg), B.decode_labels(msg))
                else:
                    weather = _tag(tags, msg.data, parse_weather)
                    for s in scorers.values():
                        if weather is not None:
                            s.add_weather(weather[0] if weather[0] is not None else log_ns, weather[1])
                for s in scorers.values():
                    s.process()
    for s in scorers.values():
        s.process(final=True)
    if multi is None:
        scores, flicker, order = scorers[""].scores[method], scorers[""].flicker[method], scorers[""].domain_order
    else:
        scores, flicker, order = multi.overall(method), Flicker(), multi.domain_order()
        for s in scorers.values():
            flicker.merge(s.flicker[method])
    assert isinstance(scores, DomainScores)
    table = {d: scores.summary(d) for d in order if d in scores.per_domain}
    table["all"] = scores.summary()
    flicker.annotate(table)
    return {"tags": tags, "table": table,
            "confusion": {d: scores.per_domain[d].mat.tolist() for d in order if d in scores.per_domain},
            "flicker_pixels": {d: [int(flicker.changed[d]), int(flicker.counted[d])] for d in flicker.counted},
            "num_classes": int(scores.num_classes)}


def _tag(tags: list[str], text: str, parse) -> Optional[tuple[Optional[int], dict[str, Any]]]:
    """Note the weather message's phase in ``tags``; (stamp or None, payload), None when unreadable."""
    try:
        stamp, payload = parse(text)
    except ValueError:
        return None
    domain = str(payload.get("domain", ""))
    if domain and domain not in tags:
        tags.append(domain)
    return stamp, payload


# ---------------------------------------------------------------------------------------- the task
def run_job(job: BagJob, report: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Replay and score one bag; the record of the run (``status`` ``ok`` or ``failed``)."""
    from ..bags.replay import ReplayOptions, replay, resume_dir_of

    t0, cpu0 = time.perf_counter(), time.process_time()
    started = time.time()
    fresh_peak = reset_peak_rss()
    record: dict[str, Any] = {"format": RECORD_FORMAT, "bag": job.bag, "name": job.name, "method": job.method,
                              **job.extra, "host": socket.gethostname(), "pid": os.getpid(),
                              "started": started, "threads": int(job.threads)}
    out = Path(job.out_bag)
    frames_seen = [0, 0]

    def on_frames(done: int, total: int) -> None:
        frames_seen[:] = [done, total]
        if report is not None:
            report({"frames": done, "total": total, "pid": os.getpid(), "host": record["host"]})

    try:
        resume = (resume_dir_of(out) / "checkpoint.pt").is_file() and int(job.replay.get("checkpoint_every", 0)) > 0
        opts = ReplayOptions(**{**job.replay, "overwrite": True, "resume": resume, "progress": False,
                                "on_frames": on_frames})
        if report is not None:
            report({"frames": 0, "total": 0, "pid": os.getpid(), "host": record["host"]})
        with pinned_threads(job.threads):
            t1 = time.perf_counter()
            record["setup_s"] = t1 - t0  # a fresh worker imports torch and the package here
            res = replay(job.bag, out, dict(job.cfg), opts)
            record["replay_s"] = time.perf_counter() - t1
            info = json.loads((out / "replay.json").read_text())
            summary = out / "replay_summary.json"
            classes = json.loads(summary.read_text()).get("num_classes") if summary.is_file() else None
            t2 = time.perf_counter()
            scores = score_bag(job.bag, out, info, classes, prefix=opts.prefix, skip_bad=opts.skip_bad,
                               max_pixels=int(job.cfg.get("max_image_pixels") or 0) or None)
            record["score_s"] = time.perf_counter() - t2
        record.update(status="ok", reason="", frames=res.frames, bad_frames=res.bad_frames,
                      skipped_frames=res.skipped_frames, bad_chunks=res.bad_chunks, model_s=res.model_s,
                      replay_wall_s=res.wall_s, resumed_from_frame=info.get("resumed_from_frame"),
                      device=info.get("device"), counters=_counters(info.get("adapter") or {}), **scores,
                      quality=_quality(info), guard=info.get("guard") or {},
                      output=str(out) if job.keep_output else None)
        if report is not None:
            report({"frames": res.frames, "total": res.frames, "pid": os.getpid(), "host": record["host"]})
    except KeyboardInterrupt:
        raise
    except Exception as err:  # a bad bag is this bag's result, never the fleet's end
        record.update(status="failed", reason=one_line(err), frames=frames_seen[0])
    finally:
        if not job.keep_output and record.get("status") == "ok":
            shutil.rmtree(out, ignore_errors=True)
    record["task_s"] = time.perf_counter() - t0
    record["cpu_s"] = time.process_time() - cpu0  # the worker process's CPU time, all its threads
    record["peak_rss_mb"] = peak_rss_mb()
    record["peak_rss_scope"] = "task" if fresh_peak else "process"
    return record
