"""Online scoring against ground truth: predictions matched to label images by stamp, accumulated per
weather phase (the schedule's ``domain``), written as CSV + JSON + a plot.

Pure Python/NumPy (no rclpy) so the ``evaluator`` node and ``tta-perception replay`` score the same
way; the accumulation is the benchmark's (``DomainScores``), so the node's mIoU, the replay's and
the benchmark's are the same formula (accumulated per domain, not a mean of per-frame values).

Messages arrive in any order across topics (and processes), so nothing is scored until the phase of
the frame is known: the weather message with the same stamp, or the latest earlier one once a later
one has arrived (CARLA publishes weather at its own rate). Everything is bounded: pending frames,
pending predictions and the per-frame rows. Given the camera's motion by stamp (``video``), each
method's label flicker is counted per phase beside its mIoU (``metrics.flicker``).
"""
from __future__ import annotations

import bisect
import collections
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from ..atomic import atomic_write, atomic_write_text
from ..world.classes import IGNORE_INDEX
from .domains import DomainScores
from .flicker import Flicker
from .resize import nearest_resize

UNKNOWN_DOMAIN = "unknown"
WEATHER_KEYS = ("fog_density", "precipitation", "cloudiness", "sun_altitude_angle", "wetness")


@dataclass
class FrameRow:
    """One ground-truth frame: its phase, weather and each method's score (NaN = not processed)."""

    stamp_ns: int
    domain: Optional[str] = None
    weather: Optional[dict[str, float]] = None
    frame: Optional[int] = None
    time: Optional[float] = None
    miou: dict[str, float] = field(default_factory=dict)
    acc: dict[str, float] = field(default_factory=dict)
    quality: dict[str, tuple[float, int]] = field(default_factory=dict)  # method -> (estimate, level)


class StreamScorer:
    """Match ``(method, stamp) -> class ids`` to ``stamp -> labels`` and score per domain."""

    def __init__(self, methods: Sequence[str], num_classes: int, max_pending: int = 300,
                 max_rows: int = 100_000, max_weather: int = 5000, video: Any = None):
        if not methods:
            raise ValueError("StreamScorer needs at least one method name")
        if len(set(methods)) != len(methods):
            raise ValueError(f"method names must be unique, got {list(methods)}")
        self.methods = list(methods)
        self.num_classes = int(num_classes)
        self.max_pending, self.max_rows = int(max_pending), int(max_rows)
        self._truth: "collections.OrderedDict[int, np.ndarray]" = collections.OrderedDict()
        self._preds: dict[str, "collections.OrderedDict[int, np.ndarray]"] = {
            m: collections.OrderedDict() for m in self.methods}
        self._pairs: "collections.OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray]]" = \
            collections.OrderedDict()
        self._w_stamps: list[int] = []
        self._w_payloads: list[dict[str, Any]] = []
        self._max_weather = int(max_weather)
        self.rows: "collections.OrderedDict[int, FrameRow]" = collections.OrderedDict()
        self.scores: dict[str, DomainScores] = {m: DomainScores(self.num_classes) for m in self.methods}
        # domain memory: each method's detected domain (the node's 'domain' topic), by stamp
        self._detected: dict[str, tuple[list[int], list[int]]] = {m: ([], []) for m in self.methods}
        self.detected_scores: dict[str, DomainScores] = {m: DomainScores(self.num_classes) for m in self.methods}
        self._phase_vs_detected: dict[str, "collections.Counter[tuple[str, int]]"] = {
            m: collections.Counter() for m in self.methods}
        self.domain_order: list[str] = []
        self.counts: dict[str, int] = collections.Counter()
        self.first_stamp: Optional[int] = None
        self.current_domain: str = UNKNOWN_DOMAIN
        # label flicker (docs/video.md): ``video`` gives the motion into a frame by stamp,
        # ``link(stamp) -> (previous stamp, motion) | None`` and ``warp(ids, motion) -> (warped,
        # valid)`` (``engine.temporal.MotionLog``); each method's last scored frames are kept for it
        self.video = video
        self.flicker: dict[str, Flicker] = {m: Flicker() for m in self.methods}
        self._recent: dict[str, "collections.OrderedDict[int, tuple[np.ndarray, np.ndarray]]"] = {
            m: collections.OrderedDict() for m in self.methods}
        # each method's label-free quality estimate (the node's 'quality' topic), by stamp, until its
        # ground-truth frame has a row (bounded like the predictions)
        self._quality: dict[str, "collections.OrderedDict[int, tuple[float, int]]"] = {
            m: collections.OrderedDict() for m in self.methods}

    # ------------------------------------------------------------------ input
    def add_weather(self, stamp_ns: Optional[int], payload: Mapping[str, Any]) -> None:
        if stamp_ns is None:
            self.counts["weather_without_stamp"] += 1
            return
        i = bisect.bisect_right(self._w_stamps, stamp_ns)
        if i and self._w_stamps[i - 1] == stamp_ns:
            self._w_payloads[i - 1] = dict(payload)
        else:
            self._w_stamps.insert(i, stamp_ns)
            self._w_payloads.insert(i, dict(payload))
        if len(self._w_stamps) > self._max_weather:
            del self._w_stamps[0], self._w_payloads[0]
        self.current_domain = str(self._w_payloads[-1].get("domain", UNKNOWN_DOMAIN))
        self.counts["weather"] += 1

    def add_detected(self, method: str, stamp_ns: int, domain_id: int) -> None:
        """The domain ``method``'s detector is in from ``stamp_ns`` on (a 'domain' message)."""
        stamps, ids = self._detected[method]
        i = bisect.bisect_right(stamps, stamp_ns)
        stamps.insert(i, stamp_ns)
        ids.insert(i, int(domain_id))
        self.counts[f"detected_{method}"] += 1

    def _detected_at(self, method: str, stamp_ns: int) -> Optional[int]:
        return id_at(*self._detected[method], stamp_ns)

    def purity(self) -> dict[str, dict[str, Any]]:
        """Per method that reports domains: how its detected domains match the weather phases."""
        from .domains import detector_purity

        out = {}
        for m, pairs in self._phase_vs_detected.items():
            if pairs:
                flat = list(pairs.elements())
                out[m] = detector_purity([p for p, _ in flat], [i for _, i in flat])
        return out

    def add_quality(self, method: str, stamp_ns: int, estimate: float, level: int) -> None:
        """``method``'s quality estimate of its output at ``stamp_ns`` (a 'quality' message), scored
        against the truth of that frame (``quality``)."""
        if method not in self._quality:
            raise ValueError(f"unknown method {method!r}; scoring {self.methods}")
        self.counts[f"quality_{method}"] += 1
        row = self.rows.get(stamp_ns)
        if row is not None:
            row.quality[method] = (float(estimate), int(level))
            return
        pending = self._quality[method]
        pending[stamp_ns] = (float(estimate), int(level))
        while len(pending) > self.max_pending:
            pending.popitem(last=False)
            self.counts[f"quality_unmatched_{method}"] += 1

    def add_truth(self, stamp_ns: int, labels: np.ndarray) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"ground truth must be a 2-D class-id image, got shape {labels.shape}")
        self.counts["truth"] += 1
        if self.first_stamp is None or stamp_ns < self.first_stamp:
            self.first_stamp = stamp_ns
        if stamp_ns in self._truth:
            self.counts["duplicate_truth"] += 1
        self._truth[stamp_ns] = labels
        if len(self.rows) < self.max_rows and stamp_ns not in self.rows:
            self.rows[stamp_ns] = FrameRow(stamp_ns)
        elif stamp_ns not in self.rows:
            self.counts["rows_not_kept"] += 1
        row = self.rows.get(stamp_ns)
        for m, pending in self._quality.items():
            q = pending.pop(stamp_ns, None)
            if q is not None and row is not None:
                row.quality[m] = q
        for m in self.methods:
            pred = self._preds[m].pop(stamp_ns, None)
            if pred is not None:
                self._pair(m, stamp_ns, pred, labels)
        while len(self._truth) > self.max_pending:
            self._truth.popitem(last=False)

    def add_prediction(self, method: str, stamp_ns: int, class_ids: np.ndarray) -> None:
        if method not in self._preds:
            raise ValueError(f"unknown method {method!r}; scoring {self.methods}")
        class_ids = np.asarray(class_ids)
        self.counts[f"predictions_{method}"] += 1
        truth = self._truth.get(stamp_ns)
        if truth is not None:
            self._pair(method, stamp_ns, class_ids, truth)
            return
        pending = self._preds[method]
        pending[stamp_ns] = class_ids
        while len(pending) > self.max_pending:
            pending.popitem(last=False)
            self.counts[f"unmatched_{method}"] += 1

    def _pair(self, method: str, stamp_ns: int, pred: np.ndarray, truth: np.ndarray) -> None:
        if (method, stamp_ns) in self._pairs or method in self._row_scored(stamp_ns):
            self.counts[f"duplicate_{method}"] += 1
            return
        self._pairs[(method, stamp_ns)] = (pred, truth)
        while len(self._pairs) > self.max_pending * max(1, len(self.methods)):
            (m, s), (p, t) = self._pairs.popitem(last=False)
            self._score(m, s, p, t, self._resolve(s, final=True))

    def _row_scored(self, stamp_ns: int) -> dict[str, float]:
        row = self.rows.get(stamp_ns)
        return row.miou if row is not None else {}

    # ------------------------------------------------------------------ phases
    def _resolve(self, stamp_ns: int, final: bool) -> Optional[tuple[str, Optional[dict[str, Any]]]]:
        """(domain, weather payload) of a stamp; None while a later weather message may still come."""
        i = bisect.bisect_right(self._w_stamps, stamp_ns)
        exact = i and self._w_stamps[i - 1] == stamp_ns
        if exact or (i and i < len(self._w_stamps)):
            payload = self._w_payloads[i - 1]
            return str(payload.get("domain", UNKNOWN_DOMAIN)), payload
        if not final:
            return None
        if i:
            payload = self._w_payloads[i - 1]
            return str(payload.get("domain", UNKNOWN_DOMAIN)), payload
        if self._w_stamps:  # only later weather: the first phase
            payload = self._w_payloads[0]
            return str(payload.get("domain", UNKNOWN_DOMAIN)), payload
        return UNKNOWN_DOMAIN, None

    def process(self, final: bool = False) -> int:
        """Score every matched pair whose phase is known (all of them when ``final``)."""
        done = 0
        for key in list(self._pairs):
            resolved = self._resolve(key[1], final)
            if resolved is None:
                continue
            pred, truth = self._pairs.pop(key)
            self._score(key[0], key[1], pred, truth, resolved)
            done += 1
        if final:
            for stamp, row in self.rows.items():
                if row.domain is None:
                    self._annotate(row, self._resolve(stamp, final=True))
        return done

    def _annotate(self, row: FrameRow, resolved: tuple[str, Optional[dict[str, Any]]]) -> None:
        domain, payload = resolved
        row.domain = domain
        if payload is not None:
            fields = payload.get("weather") or {}
            row.weather = {k: float(fields[k]) for k in WEATHER_KEYS if k in fields}  # what CSV/plot use
            if payload.get("frame") is not None and int(_stamp_of(payload) or -1) == row.stamp_ns:
                row.frame = int(payload["frame"])
            if payload.get("time") is not None and int(_stamp_of(payload) or -1) == row.stamp_ns:
                row.time = float(payload["time"])

    def _score(self, method: str, stamp_ns: int, pred: np.ndarray, truth: np.ndarray,
               resolved: tuple[str, Optional[dict[str, Any]]]) -> None:
        domain = resolved[0]
        if pred.shape != truth.shape:
            if pred.ndim != 2:
                self.counts[f"bad_shape_{method}"] += 1
                return
            pred = nearest_resize(pred, truth.shape[0], truth.shape[1])
            self.counts[f"resized_{method}"] += 1
        if domain not in self.domain_order:
            self.domain_order.append(domain)
        frame = self.scores[method].add_frame(pred, truth, domain)
        self.counts[f"scored_{method}"] += 1
        if self.video is not None:
            self._flicker(method, stamp_ns, pred, truth, domain)
        detected = self._detected_at(method, stamp_ns)
        if detected is not None:
            self.detected_scores[method].add_frame(pred, truth, f"domain {detected}")
            self._phase_vs_detected[method][(domain, detected)] += 1
        row = self.rows.get(stamp_ns)
        if row is not None:
            if row.domain is None:
                self._annotate(row, resolved)
            row.miou[method] = frame.miou()
            row.acc[method] = frame.accuracy()

    def _flicker(self, method: str, stamp_ns: int, pred: np.ndarray, truth: np.ndarray, domain: str) -> None:
        """Count the label flicker of this frame against the method's prediction of the frame
        before it in the camera's chain (not counted where the method skipped that frame, the chain
        broke, or the camera image has not arrived)."""
        truth = np.where(truth < self.num_classes, truth, IGNORE_INDEX)  # what the mIoU ignores
        recent = self._recent[method]
        link = self.video.link(stamp_ns)
        if link is not None and link[0] in recent:
            prev_pred, prev_truth = recent[link[0]]
            self.flicker[method].add_along(pred, truth, prev_pred, prev_truth, link[1], self.video.warp, domain)
            self.counts[f"flicker_{method}"] += 1
        recent[stamp_ns] = (pred, truth)
        while len(recent) > 8:
            recent.popitem(last=False)

    # ------------------------------------------------------------------ results
    def table(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{method: {domain: {miou, acc, frames}, ..., all: {...}}}``, mIoU/accuracy in percent."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for m in self.methods:
            scores = self.scores[m]
            per = {d: scores.summary(d) for d in self.domain_order if d in scores.per_domain}
            per["all"] = scores.summary()
            out[m] = per if self.video is None else self.flicker[m].annotate(per)
        return out

    def detected_table(self) -> dict[str, dict[str, dict[str, float]]]:
        """Like ``table``, by each method's detected domain (only methods that report domains)."""
        return {m: {d: s.summary(d) for d in s.per_domain} for m, s in self.detected_scores.items()
                if s.per_domain}

    def frames_scored(self, method: str) -> int:
        return int(self.counts.get(f"scored_{method}", 0))

    def status(self) -> dict[str, Any]:
        """What the evaluator publishes as running metrics."""
        return {"methods": self.methods, "current_domain": self.current_domain,
                "table": self.table(), "counts": dict(self.counts),
                "detected": self.detected_table(), "purity": self.purity(),
                "pending": {"truth": len(self._truth), "pairs": len(self._pairs),
                            **{f"predictions_{m}": len(p) for m, p in self._preds.items()}}}

    def recovery(self) -> dict[str, list[dict[str, Any]]]:
        """Per method, the time to recover after each weather change (``metrics.time_to_recover``)
        on the per-frame mIoU by schedule frame; rows without a schedule frame (CARLA mode) are
        left out. Meaningful for instant switches only (e.g. ``dynamic_abrupt``)."""
        from .recovery import time_to_recover

        rows = [r for r in self.rows.values() if r.frame is not None and r.domain]
        return {m: [x.as_dict() for x in time_to_recover(
                    [(r.frame, r.domain, 100.0 * r.miou[m]) for r in rows if m in r.miou])]
                for m in self.methods}

    def quality_rows(self, method: str) -> list[FrameRow]:
        """The rows of frames with both ``method``'s quality estimate and its score, in stamp order."""
        return [self.rows[s] for s in sorted(self.rows) if method in self.rows[s].quality and method in self.rows[s].miou]

    def quality(self, window: int = 10) -> dict[str, dict[str, Any]]:
        """Per method that sent quality estimates: how they match the truth of the same frames
        (``metrics.quality.validate``: Spearman per frame and per ``window`` frames, MAE per phase, the
        frames per level); JSON-safe (NaN -> None)."""
        return {m: quality_validation(self.quality_rows(m), m, window) for m in self.methods
                if self.counts.get(f"quality_{m}")}

    def write(self, out_dir: str | Path, prefix: str = "", plot: bool = True, title: str = "") -> dict[str, Path]:
        """frames CSV, per-domain CSV, summary JSON and (optionally) the PNG; each written atomically."""
        self.process(final=True)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"frames": out_dir / f"{prefix}frames.csv", "domains": out_dir / f"{prefix}domains.csv",
                 "summary": out_dir / f"{prefix}summary.json"}
        rows = list(self.rows.values())
        header = ["stamp_ns", "time_s", "frame", "domain", *WEATHER_KEYS]
        judged = [m for m in self.methods if self.counts.get(f"quality_{m}")]  # methods with a quality topic
        for m in self.methods:
            header += [f"{m}_miou", f"{m}_acc"] + ([f"{m}_quality", f"{m}_quality_level"] if m in judged else [])
        lines = []
        for r in rows:
            rel = (r.stamp_ns - self.first_stamp) / 1e9 if self.first_stamp is not None else math.nan
            w = r.weather or {}
            line = [r.stamp_ns, f"{rel:.3f}", "" if r.frame is None else r.frame, r.domain or UNKNOWN_DOMAIN]
            line += [_fmt(w.get(k)) for k in WEATHER_KEYS]
            for m in self.methods:
                line += [_fmt(100.0 * r.miou[m]) if m in r.miou else "",
                         _fmt(100.0 * r.acc[m]) if m in r.acc else ""]
                if m in judged:
                    q = r.quality.get(m)
                    line += [_fmt(q[0]), QUALITY_LEVELS[q[1]]] if q is not None else ["", ""]
            lines.append(line)
        _atomic_csv(paths["frames"], header, lines)
        table = self.table()
        video = [] if self.video is None else ["flicker"]  # the column only where flicker is scored
        dom_lines = [[m, d, int(v["frames"]), _fmt(v["miou"]), _fmt(v["acc"])] + [_fmt(v.get(k)) for k in video]
                     for m, per in table.items() for d, v in per.items()]
        dom_lines += [[m, f"detected {d}", int(v["frames"]), _fmt(v["miou"]), _fmt(v["acc"])] + [""] * len(video)
                      for m, per in self.detected_table().items() for d, v in per.items()]
        _atomic_csv(paths["domains"], ["method", "domain", "frames", "miou", "acc", *video], dom_lines)
        summary = {"methods": self.methods, "num_classes": self.num_classes, "domains": self.domain_order,
                   "table": table, "counts": dict(self.counts), "frames": len(rows),
                   "detected": self.detected_table(), "purity": self.purity(), "recovery": self.recovery()}
        quality = self.quality()
        if quality:
            summary["quality"] = quality
        atomic_write_text(paths["summary"], json.dumps(summary, indent=2, sort_keys=False, default=_json_default) + "\n")
        if plot and rows and any(r.miou for r in rows):
            paths["plot"] = self.plot(out_dir / f"{prefix}plot.png", title=title)
        return paths

    def plot(self, path: str | Path, title: str = "") -> Path:
        """Per-frame mIoU of each method, the weather timeline underneath (``plots.plot_stream``)."""
        from tta_perception.plots import plot_stream
        from tta_perception.world.weather import WeatherParameters

        rows = list(self.rows.values())
        default = WeatherParameters().as_dict()
        weather, last = [], default
        for r in rows:
            last = {**default, **(r.weather or last)}
            weather.append(last)
        have_frames = all(r.frame is not None for r in rows)
        frames = [r.frame for r in rows] if have_frames else list(range(len(rows)))
        series = {m: [100.0 * r.miou[m] if m in r.miou else math.nan for r in rows] for m in self.methods}
        table = self.table()
        label = ", ".join(f"{m} {table[m]['all']['miou']:.1f}" for m in self.methods)
        smooth = max(1, min(25, len(rows) // 20))
        return plot_stream(path, series, frames, weather, [r.domain or UNKNOWN_DOMAIN for r in rows],
                           ylabel="mIoU %", title=(title + " " if title else "") + f"(overall mIoU: {label})",
                           smooth=smooth)


class CameraScorers:
    """Several cameras of one car: a ``StreamScorer`` per camera (its own ground truth, matched by
    stamp) and the overall score of each method over every camera.

    The overall score accumulates the cameras' confusion matrices (the benchmark's formula: mIoU of
    the summed matrix, not a mean of the cameras' mIoU). The weather is the car's, shared by all.
    """

    def __init__(self, cameras: Sequence[str], methods: Sequence[str], num_classes: int, max_pending: int = 300,
                 videos: Optional[Mapping[str, Any]] = None):
        if not cameras or len(set(cameras)) != len(cameras):
            raise ValueError(f"camera names must be distinct and non-empty, got {list(cameras)}")
        self.cameras, self.methods, self.num_classes = list(cameras), list(methods), int(num_classes)
        self.scorers = {c: StreamScorer(methods, num_classes, max_pending=max_pending,
                                        video=(videos or {}).get(c)) for c in self.cameras}

    @property
    def flicker_on(self) -> bool:
        """Whether any camera scores label flicker."""
        return any(s.video is not None for s in self.scorers.values())

    def add_weather(self, stamp_ns: Optional[int], payload: Mapping[str, Any]) -> None:
        for s in self.scorers.values():
            s.add_weather(stamp_ns, payload)

    def process(self, final: bool = False) -> int:
        return sum(s.process(final) for s in self.scorers.values())

    def overall(self, method: str) -> DomainScores:
        """``method``'s scores over every camera (the per-domain matrices summed)."""
        total = DomainScores(self.num_classes)
        for s in self.scorers.values():
            part = s.scores[method]
            for d, cm in part.per_domain.items():
                total.per_domain.setdefault(d, total._new()).merge(cm)
                total.frames[d] += part.frames[d]
            total.total.merge(part.total)
        return total

    def domain_order(self) -> list[str]:
        order: list[str] = []
        for s in self.scorers.values():
            order += [d for d in s.domain_order if d not in order]
        return order

    def tables(self) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
        """``{method: {camera | 'overall': {domain: {miou, acc, frames}, ..., all}}}`` (one
        ``format_table`` per method: the cameras side by side)."""
        out: dict[str, Any] = {}
        order = self.domain_order()
        for m in self.methods:
            per_cam = {c: s.table()[m] for c, s in self.scorers.items()}
            total = self.overall(m)
            overall = {d: total.summary(d) for d in order if d in total.per_domain}
            overall["all"] = total.summary()
            if self.flicker_on:  # pixels pooled over the cameras, like the confusion matrices
                pooled = Flicker()
                for s in self.scorers.values():
                    pooled.merge(s.flicker[m])
                pooled.annotate(overall)
            out[m] = {**per_cam, "overall": overall}
        return out

    def quality(self, window: int = 10) -> dict[str, dict[str, Any]]:
        """Per method that sent quality estimates: each camera's validation and ``overall`` (the
        cameras' frames together, camera after camera)."""
        out: dict[str, dict[str, Any]] = {}
        for m in self.methods:
            if not any(s.counts.get(f"quality_{m}") for s in self.scorers.values()):
                continue
            per = {c: quality_validation(s.quality_rows(m), m, window) for c, s in self.scorers.items()}
            per["overall"] = quality_validation([r for s in self.scorers.values() for r in s.quality_rows(m)], m,
                                                window)
            out[m] = per
        return out

    def text(self) -> str:
        """The per-camera tables, one per method (what the demo, the evaluator and replay print)."""
        tables = self.tables()
        parts = [f"{m}: mIoU % per camera and overall\n{format_table(t)}" for m, t in tables.items()]
        if self.flicker_on:
            parts += [f"{m}: label flicker % per camera and overall (lower = steadier)\n{format_table(t, 'flicker')}"
                      for m, t in tables.items()]
        quality = self.quality()
        if quality:
            parts.append(format_quality({f"{m} {c}": v for m, per in quality.items() for c, v in per.items()}))
        return "\n\n".join(parts)

    def write(self, out_dir: str | Path, prefix: str = "", plot: bool = True, title: str = "") -> dict[str, Path]:
        """Each camera's files (``<prefix><camera>_frames.csv`` ...) and the cameras together:
        ``<prefix>summary.json`` (per camera and overall), ``<prefix>domains.csv`` (method, camera,
        domain; camera ``overall`` over all of them) and ``<prefix>plot.png``."""
        self.process(final=True)
        out_dir = Path(out_dir)
        paths: dict[str, Path] = {}
        for c, s in self.scorers.items():
            for k, p in s.write(out_dir, prefix=f"{prefix}{c}_", plot=False).items():
                paths[f"{c}_{k}"] = p
        tables = self.tables()
        paths["domains"] = out_dir / f"{prefix}domains.csv"
        video = ["flicker"] if self.flicker_on else []
        _atomic_csv(paths["domains"], ["method", "camera", "domain", "frames", "miou", "acc", *video],
                    [[m, c, d, int(v["frames"]), _fmt(v["miou"]), _fmt(v["acc"])] + [_fmt(v.get(k)) for k in video]
                     for m, per_cam in tables.items() for c, per in per_cam.items() for d, v in per.items()])
        summary = {"cameras": self.cameras, "methods": self.methods, "num_classes": self.num_classes,
                   "domains": self.domain_order(),
                   "overall": {m: t["overall"] for m, t in tables.items()},
                   "per_camera": {c: {m: tables[m][c] for m in self.methods} for c in self.cameras},
                   "counts": {c: dict(s.counts) for c, s in self.scorers.items()}}
        quality = self.quality()
        if quality:
            summary["quality"] = quality
        paths["summary"] = out_dir / f"{prefix}summary.json"
        atomic_write_text(paths["summary"], json.dumps(summary, indent=2, default=_json_default) + "\n")
        if plot and any(r.miou for s in self.scorers.values() for r in s.rows.values()):
            paths["plot"] = self.plot(out_dir / f"{prefix}plot.png", title=title)
        return paths

    def plot(self, path: str | Path, title: str = "") -> Path:
        """Per-frame mIoU of every camera (and method), the weather timeline underneath."""
        from tta_perception.plots import plot_stream
        from tta_perception.world.weather import WeatherParameters

        stamps = sorted({st for s in self.scorers.values() for st in s.rows})
        rows = {st: next(s.rows[st] for s in self.scorers.values() if st in s.rows) for st in stamps}
        default = WeatherParameters().as_dict()
        weather, last = [], default
        for st in stamps:
            last = {**default, **(rows[st].weather or last)}
            weather.append(last)
        have_frames = all(rows[st].frame is not None for st in stamps)
        frames = [rows[st].frame for st in stamps] if have_frames else list(range(len(stamps)))
        series = {}
        for c, s in self.scorers.items():
            for m in self.methods:
                name = c if len(self.methods) == 1 else f"{c}/{m}"
                series[name] = [100.0 * s.rows[st].miou[m] if st in s.rows and m in s.rows[st].miou else math.nan
                                for st in stamps]
        label = ", ".join(f"{m} {t['overall']['all']['miou']:.1f}" for m, t in self.tables().items())
        return plot_stream(path, series, frames, weather, [rows[st].domain or UNKNOWN_DOMAIN for st in stamps],
                           ylabel="mIoU %", title=(title + " " if title else "") + f"(all cameras: {label})",
                           smooth=max(1, min(25, len(stamps) // 20)))


QUALITY_LEVELS = ("OK", "WARN", "ERROR")  # runtime.quality.LEVELS (metrics imports no runtime)


def quality_validation(rows: Sequence[FrameRow], method: str, window: int = 10) -> dict[str, Any]:
    """``metrics.quality.validate`` of ``method``'s estimates on these rows (stamp order) against its
    true per-frame pixel accuracy and mIoU, per phase; JSON-safe."""
    from .quality import finite_or_none, validate

    rows = [r for r in rows if method in r.quality and method in r.miou]
    return finite_or_none(validate([r.quality[method][0] for r in rows], [r.quality[method][1] for r in rows],
                                   [r.acc[method] for r in rows], [r.miou[method] for r in rows],
                                   [r.domain or UNKNOWN_DOMAIN for r in rows], window=window))


def format_quality(validations: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per method (or method and camera): how its quality estimate matches the truth."""
    def num(v: Any, fmt: str) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    lines = ["quality estimate against the truth (Spearman with pixel accuracy / mIoU per frame and per "
             "window of frames; mean absolute error in accuracy points; frames per level):"]
    for name, v in validations.items():
        levels = v.get("levels") or {}
        lines.append(f"  {name}: Spearman acc {num(v.get('spearman_accuracy'), '.2f')} / mIoU "
                     f"{num(v.get('spearman_miou'), '.2f')} per frame, acc {num(v.get('spearman_accuracy_window'), '.2f')}"
                     f" / mIoU {num(v.get('spearman_miou_window'), '.2f')} per {v.get('window', 10)} frames; MAE "
                     f"{num(v.get('mae_points'), '.1f')} points (bias {num(v.get('bias_points'), '+.1f')}); "
                     + " / ".join(f"{k} {levels.get(k, 0)}" for k in QUALITY_LEVELS)
                     + f" of {v.get('frames', 0)} frames")
        phases = v.get("mae_points_by_phase") or {}
        if len(phases) > 1:
            lines.append("    MAE per phase: " + ", ".join(f"{d} {num(x, '.1f')}" for d, x in phases.items()))
    return "\n".join(lines)


def id_at(stamps: Sequence[int], ids: Sequence[int], stamp_ns: int) -> Optional[int]:
    """The detected domain in force at ``stamp_ns``: the id of the last change at or before it
    (``stamps`` sorted), None before the first."""
    i = bisect.bisect_right(stamps, stamp_ns)
    return ids[i - 1] if i else None


def plot_frame_csvs(path: str | Path, runs: Mapping[str, str | Path], title: str = "") -> Path:
    """One plot of several runs' ``*frames.csv`` (evaluator or replay), aligned on the schedule frame.

    E.g. two launches of the same camera with ``method:=source`` and ``method:=dplot``, or two replays
    of one bag; each CSV contributes its ``<method>_miou`` column(s), labelled ``<run>`` (or
    ``<run>/<method>`` when a CSV holds several methods).
    """
    from tta_perception.plots import plot_stream
    from tta_perception.world.weather import WeatherParameters

    series: dict[str, dict[int, float]] = {}
    meta: dict[int, tuple[str, dict[str, float]]] = {}
    for run, csv_path in runs.items():
        with open(csv_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        cols = [c for c in (rows[0].keys() if rows else []) if c.endswith("_miou")]
        if not rows or not cols:
            raise ValueError(f"{csv_path}: no rows or no '*_miou' column (not a frames CSV?)")
        if any(not r["frame"] for r in rows):
            raise ValueError(f"{csv_path}: rows without a frame number cannot be aligned")
        for col in cols:
            label = run if len(cols) == 1 else f"{run}/{col[:-5]}"
            series[label] = {int(r["frame"]): float(r[col]) for r in rows if r[col] not in ("", "nan")}
        for r in rows:
            meta.setdefault(int(r["frame"]), (r["domain"], {k: float(r[k]) for k in WEATHER_KEYS if r.get(k)}))
    frames = sorted(meta)
    default = WeatherParameters().as_dict()
    weather = [{**default, **meta[f][1]} for f in frames]
    ys = {label: [values.get(f, math.nan) for f in frames] for label, values in series.items()}
    path = Path(path)
    return plot_stream(path, ys, frames, weather, [meta[f][0] for f in frames], ylabel="mIoU %", title=title,
                       smooth=max(1, min(25, len(frames) // 20)))


def format_table(table: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str = "miou") -> str:
    """Domains as rows, methods as columns (what the demo and replay print)."""
    methods = list(table)
    domains: list[str] = []
    for per in table.values():
        for d in per:
            if d not in domains and d != "all":
                domains.append(d)
    domains.append("all")
    width = max([10] + [len(m) + 2 for m in methods])
    rows = []
    for d in domains:
        cells, frames = [], []
        for m in methods:
            v = table[m].get(d)
            x = float(v.get(metric, math.nan)) if v else math.nan
            cells.append(f"{x:>{width}.1f}" if not math.isnan(x) else f"{'-':>{width}}")
            frames.append(str(int(v["frames"])) if v else "0")
        rows.append((d, cells, "/".join(frames)))
    fw = max([8] + [len(f) for _, _, f in rows]) + 2  # the frames column never runs into the last method
    head = f"{'phase':<12}" + "".join(f"{m:>{width}}" for m in methods) + f"{'frames':>{fw}}"
    lines = [head, "-" * len(head)]
    lines += [f"{d:<12}" + "".join(cells) + f"{frames:>{fw}}" for d, cells, frames in rows]
    return "\n".join(lines)


def _stamp_of(payload: Mapping[str, Any]) -> Optional[int]:
    stamp = payload.get("stamp")
    if isinstance(stamp, Mapping) and "sec" in stamp:
        return int(stamp["sec"]) * 1_000_000_000 + int(stamp.get("nanosec", 0))
    return None


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    v = float(v)
    return "nan" if math.isnan(v) else f"{v:.4f}"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return str(obj)


def _atomic_csv(path: Path, header: list[str], rows: Iterable[list[Any]]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)

    atomic_write(path, write)
