"""What a ``tta_node`` says on /diagnostics, defined once: the status names (the node's and each
camera's), the keys other participants read, the text form of a value, and the values the session
reports. The node builds its statuses from here and every reader (node-bench, ``--storm``,
``ros.diagnostics.Watch``, the tests) parses with the same definitions, so a rename cannot leave a
reader waiting for a status nobody sends. The per-frame ``quality`` message's layout is defined here
too (``quality_status``), for the node and the replay.
"""
from __future__ import annotations

import math
import time
from typing import Any, Optional, Protocol

from . import image_codec as codec

PREFIX = "tta_perception: "  # every tta_perception node's status starts with it
CAMERA_MARK = " camera "  # "tta_perception: /ns/tta_node camera front"
NODE_NAME = "tta_node"

# ------------------------------------------------------------------ keys other participants read
STATE, ACTIVE = "state", "active"  # ACTIVE: the state of a node that answers frames
METHOD, DEVICE, INPUT_SIZE, RELOADING = "method", "device", "input_size", "reloading"
INPUT_PUBLISHERS, INPUT_RELIABILITY = "input_publishers", "input_reliability"  # added by the ROS node
LATENCY_P50_MS, LATENCY_P95_MS, MODEL_P50_MS = "latency_p50_ms", "latency_p95_ms", "model_p50_ms"
ADAPTATION_STEPS, MEAN_ADAPT_MS, SELECTED_BLOCKS = "adaptation_steps", "mean_adapt_ms", "selected_blocks"
DOMAINS_KNOWN, DOMAIN_SWITCHES = "domains_known", "domain_switches"  # with domain memory only
FRAMES_RECEIVED, FRAMES_PROCESSED, FRAMES_DROPPED = "frames_received", "frames_processed", "frames_dropped"
LOST_IN_TRANSPORT, QOS_REMATCHES, INFERENCE_ERRORS = "lost_in_transport", "qos_rematches", "inference_errors"
RELOADS, RELOADS_COALESCED, RELOAD_FAILURES = "reloads", "reloads_coalesced", "reload_failures"
SAVES, SAVES_SHARED = "saves", "saves_shared"
# the quality of the outputs (with 'quality'): per camera its recent mean estimate and level
QUALITY_ESTIMATE, QUALITY_LEVEL, QUALITY_CALIBRATION = "quality_estimate", "quality_level", "quality_calibration"
QUALITY_GAIN = "quality_gain"  # the recent mean estimated gain over the source model (quality_source_every)
QUALITY_KEPT = "quality_kept"  # the recent share of the source model's classes the outputs keep (quality_source_every)
# the collapse guard (with 'guard'): runtime.guard.CollapseGuard.stats()
GUARD_RECOVERIES, GUARD_CHECKS, GUARD_LAST_REASON = "guard_recoveries", "guard_checks", "guard_last_reason"
GUARD_KEYS = (GUARD_RECOVERIES, "guard_to_source", GUARD_CHECKS, "guard_bad_checks", "guard_blind_frames",
              "guard_nonfinite", "guard_nonfinite_inputs", GUARD_LAST_REASON)

#: counters always present (0 until something happens), so tools can rely on them
COUNTERS = (FRAMES_RECEIVED, FRAMES_PROCESSED, FRAMES_DROPPED, LOST_IN_TRANSPORT, QOS_REMATCHES,
            "frames_during_reload", *codec.REASONS, INFERENCE_ERRORS, "nonfinite_outputs", "cuda_oom",
            RELOADS, RELOADS_COALESCED, RELOAD_FAILURES, "rollbacks", "resets_requested", SAVES,
            SAVES_SHARED, "saves_refused")
#: what each camera's status shows (several cameras)
CAMERA_KEYS = (FRAMES_RECEIVED, FRAMES_PROCESSED, FRAMES_DROPPED, LOST_IN_TRANSPORT, *codec.REASONS,
               "nonfinite_outputs")


# ------------------------------------------------------------------ names
def node_fqn(ns: str, name: str = NODE_NAME) -> str:
    """The fully qualified name of node ``name`` started under namespace ``ns``."""
    return f"{ns.rstrip('/')}/{name}"


def status_name(fqn: str) -> str:
    """The status of the tta_perception node ``fqn`` (its fully qualified name)."""
    return PREFIX + fqn


def camera_status_name(fqn: str, camera: str) -> str:
    return status_name(fqn) + CAMERA_MARK + camera


def quality_status_name(fqn: str, camera: str = "") -> str:
    """The status of the per-frame ``quality`` message of node ``fqn`` (its camera, or 'camera')."""
    return f"{fqn}: {camera or 'camera'} quality"


def is_node_status(name: str, ns: str) -> bool:
    """Whether ``name`` is the node status of the ``tta_node`` in namespace ``ns``."""
    return name == status_name(node_fqn(ns))


def camera_of(name: str, ns: str) -> Optional[str]:
    """The camera whose status ``name`` is, of the ``tta_node`` in ``ns`` (None: not such a status)."""
    head = status_name(node_fqn(ns)) + CAMERA_MARK
    return name[len(head):] if name.startswith(head) else None


# ------------------------------------------------------------------ values as text
def text(value: Any) -> str:
    """A value as a status carries it (readers compare with ``TRUE``/``FALSE``)."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, bool):
        return TRUE if value else FALSE
    return str(value)


TRUE, FALSE = "true", "false"


def number(values: dict[str, str], key: str) -> float:
    """A key's value as a number (NaN when absent or not a number)."""
    try:
        return float(values.get(key))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


# ------------------------------------------------------------------ the per-frame quality message
QUALITY_TOPIC = "quality"  # per camera C: C/quality, as the node's other outputs
#: keys of the quality message, before the signals (runtime.quality.SIGNALS, 4 decimals)
QUALITY_KEYS = ("estimate", "level", "calibrated", "calibration", "reason", "source_estimate", "gain", "kept")


def quality_status(fqn: str, camera: str, frame_id: str, quality: Any, calibration: str) -> dict[str, Any]:
    """The one ``DiagnosticStatus`` of a frame's ``quality`` message, as plain data (the node and the
    replay build their message types from it): ``level`` (0 OK, 1 WARN, 2 ERROR: DiagnosticStatus's),
    ``name``, ``message``, ``hardware_id`` (the image's frame_id) and ``values`` ((key, text) pairs)."""
    from .quality import LEVELS, SIGNALS

    est = float(quality.estimate)
    if quality.reason:
        message = quality.reason
    elif math.isnan(est):
        message = "no estimate"
    elif quality.calibrated:
        message = f"estimated pixel accuracy {est:.2f}"
    else:
        message = f"mean confidence {est:.2f} (uncalibrated estimate)"
    values = [("estimate", _four(est)), ("level", LEVELS[int(quality.level)]),
              ("calibrated", TRUE if quality.calibrated else FALSE), ("calibration", str(calibration)),
              ("reason", str(quality.reason)),
              ("source_estimate", _four(quality.source_estimate)), ("gain", _four(quality.gain)),
              ("kept", _four(quality.kept))]
    signals = quality.signals or {}
    values += [(k, _four(signals[k])) for k in (*SIGNALS, "nonfinite") if k in signals]
    return {"level": int(quality.level), "name": quality_status_name(fqn, camera), "message": message,
            "hardware_id": str(frame_id), "values": values}


def _four(value: Any) -> str:
    """A number with 4 decimals ('nan' when unknown)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "nan"
    return f"{v:.4f}" if math.isfinite(v) else "nan"


#: seconds after its last frame when a camera's quality no longer raises a status: a camera that stops
#: is reported as silent (its camera status), not by the quality of its last frames (still shown)
QUALITY_STALE_S = 10.0


def quality_is_fresh(row: dict[str, Any], now: Optional[float] = None) -> bool:
    """Whether a camera's recent quality (``Session.quality_now``) comes from a frame of the last
    :data:`QUALITY_STALE_S` seconds (a row without a time counts as fresh)."""
    t = row.get("t")
    return t is None or (time.monotonic() if now is None else now) - float(t) <= QUALITY_STALE_S


def source_text(gain: float, kept: float = float("nan")) -> str:
    """' (+0.04 against the source model, 83 % of its classes kept)' for what is known of the
    comparison with the source model, else ''."""
    parts = ([f"{gain:+.2f} against the source model"] if math.isfinite(gain) else []) + \
        ([f"{100 * kept:.0f} % of the source model's classes kept"] if math.isfinite(kept) else [])
    return f" ({', '.join(parts)})" if parts else ""


def quality_alarm(row: dict[str, Any]) -> Optional[tuple[str, str]]:
    """('warn' | 'error', message) when a camera's recent quality (``Session.quality_now``) should
    raise a status's level, else None. An uncalibrated estimate (a mean confidence, whose thresholds
    are no accuracies) raises it only when ERROR is forced: a blind camera, a non-finite output."""
    from .quality import LEVELS, OK

    level = row.get("level")
    if level is None or level <= OK or not (row.get("calibrated") or row.get("reason")):
        return None
    what = row.get("reason") or (f"estimated pixel accuracy {row['estimate']:.2f}"
                                 f"{source_text(row.get('gain', float('nan')), row.get('kept', float('nan')))} "
                                 f"over the last {row['frames']} frame(s)")
    camera = row.get("camera") or ""
    return LEVELS[level].lower(), f"quality {LEVELS[level]}{' on camera ' + camera if camera else ''}: {what}"


# ------------------------------------------------------------------ what the session reports
class Reported(Protocol):
    """What ``Diagnostics`` reads of the session (``runtime.session.Session``)."""

    state: str
    pipeline: Any
    config_error: str
    reload_error: str
    counters: Any

    @property
    def cfg(self) -> dict[str, Any]: ...
    def is_reloading(self) -> bool: ...
    def adapt_flags(self, cameras: list[str]) -> list[bool]: ...
    def quality_now(self) -> dict[str, dict[str, Any]]: ...


class Diagnostics:
    """The values and the level of the session's statuses, built on request (the node's timer)."""

    def __init__(self, session: Reported) -> None:
        self._s = session
        self._last_lost = 0  # lost_in_transport at the last status

    def values(self) -> dict[str, Any]:
        """Everything the node status reports, as a dict (also handy in tests and tools)."""
        s = self._s
        snap = s.counters.health.snapshot()
        pipe = s.pipeline
        out: dict[str, Any] = {k: snap.get(k, 0) for k in COUNTERS}
        out.update({k: snap[k] for k in ("input_rate_hz", "stamp_period_ms", LATENCY_P50_MS, LATENCY_P95_MS,
                                         MODEL_P50_MS)})
        cfg = s.cfg
        running = pipe.cfg if pipe else cfg  # what actually runs, not what was last asked for
        last = s.counters.last
        out.update({STATE: s.state,
                    "task": pipe.task if pipe else cfg["task"], "model": running["model"],
                    "architecture": running["architecture"], METHOD: running["method"],
                    DEVICE: pipe.device if pipe else cfg["device"],
                    INPUT_SIZE: "x".join(map(str, pipe.input_size)) if pipe else "",
                    "adaptation_enabled": bool(cfg["enable"]), RELOADING: s.is_reloading(),
                    "confidence": last["confidence"], "entropy": last["entropy"]})
        stats = pipe.stats() if pipe else {}  # the engine's StreamingAdapter.stats()
        method = stats.get("method") if isinstance(stats.get("method"), dict) else {}
        out[ADAPTATION_STEPS] = int(stats.get("adapt_steps", 0) or 0)
        out["adaptation_errors"] = int(stats.get("errors", 0) or 0)
        out["adapt_coalesced"] = int(stats.get("coalesced", 0) or 0)
        out[MEAN_ADAPT_MS] = float(stats.get("mean_adapt_ms", float("nan")))
        out["predict_mode"] = str(stats.get("predict_mode", ""))
        out["adapt_worker"] = (f"nice {stats.get('worker_nice', 0)}, {stats.get('worker_threads', 0)} threads"
                               if stats.get("worker_threads") else "")
        for key in ("resets", "collapse_resets", "method_resets", "nan_skips"):
            out[key] = int(method.get(key, 0) or 0)
        out["adaptation_entropy"] = float(method.get("last_entropy", float("nan")))
        out[SELECTED_BLOCKS] = ",".join(pipe.selected_blocks() if pipe else [])
        for key in ("domain", "domain_distance", "frames_in_domain", DOMAIN_SWITCHES, DOMAINS_KNOWN):
            if key in stats:  # domain memory on
                out[key] = stats[key]
        if pipe is not None and pipe.quality is not None:
            out.update(self._quality(self._worst(s.quality_now())))
            out[QUALITY_CALIBRATION] = pipe.quality_calibration
        if pipe is not None and pipe.guard is not None:
            guard = pipe.guard_stats()
            out.update({k: guard.get(k, 0 if k != GUARD_LAST_REASON else "") for k in GUARD_KEYS})
        out["config_error"] = s.config_error
        out["reload_error"] = s.reload_error
        return out

    @staticmethod
    def _worst(rows: dict[str, dict[str, Any]], fresh_only: bool = False) -> Optional[dict[str, Any]]:
        """The camera whose recent quality is worst (level, then the lower mean estimate), among the
        cameras that sent a frame in the last ``QUALITY_STALE_S`` seconds when any did (``fresh_only``:
        only those)."""
        known = [r for r in rows.values() if r.get("level") is not None]
        fresh = [r for r in known if quality_is_fresh(r)]
        known = fresh if (fresh or fresh_only) else known
        if not known:
            return None
        return max(known, key=lambda r: (r["level"], -r["estimate"] if math.isfinite(r["estimate"]) else 1.0))

    @staticmethod
    def _quality(row: Optional[dict[str, Any]]) -> dict[str, Any]:
        """``quality_estimate`` (the recent mean, 4 decimals), ``quality_level`` ('' before a frame),
        ``quality_gain`` (the recent mean gain over the source model) and ``quality_kept`` (the
        recent share of its classes kept; both nan when not judged)."""
        from .quality import LEVELS

        if row is None:
            return {QUALITY_ESTIMATE: "nan", QUALITY_LEVEL: "", QUALITY_GAIN: "nan", QUALITY_KEPT: "nan"}
        return {QUALITY_ESTIMATE: _four(row["estimate"]), QUALITY_LEVEL: LEVELS[row["level"]],
                QUALITY_GAIN: _four(row.get("gain", float("nan"))), QUALITY_KEPT: _four(row.get("kept", float("nan")))}

    def cameras(self) -> dict[str, dict[str, Any]]:
        """Per camera: input rate, latency p50/p95, frames received/processed/dropped/lost, bad
        inputs by kind, the age of its last frame (NaN before the first); empty with one camera."""
        out = {}
        for camera, health in self._s.counters.cameras.items():
            snap = health.snapshot()
            row = {k: snap.get(k, 0) for k in CAMERA_KEYS}
            row.update({k: snap[k] for k in ("input_rate_hz", "stamp_period_ms", LATENCY_P50_MS, LATENCY_P95_MS,
                                             "last_frame_age_s")})
            row["adapts"] = self._s.adapt_flags([camera])[0]
            pipe = self._s.pipeline
            if pipe is not None and pipe.quality is not None:
                row.update(self._quality(self._s.quality_now().get(camera)))
            out[camera] = row
        return out

    def quality_alarm(self, camera: Optional[str] = None) -> Optional[tuple[str, str]]:
        """What the quality of ``camera`` (None: the worst camera) does to a status (``quality_alarm``);
        None for a camera silent for more than ``QUALITY_STALE_S`` seconds."""
        pipe = self._s.pipeline
        if pipe is None or pipe.quality is None:
            return None
        rows = self._s.quality_now()
        row = self._worst(rows, fresh_only=True) if camera is None else rows.get(camera)
        return quality_alarm(row) if row is not None and quality_is_fresh(row) else None

    def status(self, last_bad_total: int) -> tuple[str, str, int, dict[str, Any]]:
        """(level 'ok'/'warn'/'error', message, bad-frame total, values) of the node status."""
        d = self.values()
        bad = sum(int(d[r]) for r in codec.REASONS) + int(d[INFERENCE_ERRORS])
        level, message = "ok", "adapting" if d["adaptation_enabled"] else "inference only"
        if d["config_error"]:
            level, message = "error", f"configure refused: {d['config_error']}"
        elif d[STATE] != ACTIVE:
            level, message = "warn", d[STATE]
        elif d["reload_error"]:
            level, message = "warn", f"reload failed: {d['reload_error']}"
        elif bad > last_bad_total:
            level, message = "warn", "bad frames received (see counters)"
        elif int(d[LOST_IN_TRANSPORT]) > self._last_lost:
            level, message = "warn", (f"{d[LOST_IN_TRANSPORT]} frames lost before the node (stamp gaps; "
                                      "see lost_in_transport)")
        self._last_lost = int(d[LOST_IN_TRANSPORT])
        if level == "ok" and d[FRAMES_PROCESSED]:
            message += f", {d['input_rate_hz']:.1f} Hz in, p50 {d[LATENCY_P50_MS]:.0f} ms"
        alarm = self.quality_alarm() if d[STATE] == ACTIVE else None
        if alarm is not None and RANK[alarm[0]] > RANK[level]:  # the outputs' quality: a camera is worse
            level, message = alarm[0], f"{alarm[1]}; {message}"
        return level, message, bad, d


RANK = {"ok": 0, "warn": 1, "error": 2}
