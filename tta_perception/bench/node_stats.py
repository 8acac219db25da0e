"""node-bench's statistics, made after a run from what the DDS side recorded (``bench.node_record``):
latency percentiles and their growth, online mIoU per phase and cycle, the node's counters summed
over the processes of a run, label flicker along the motion. The keys are the report's (JSON, CSV,
the docs quote them)."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional, Sequence

import numpy as np

from ..runtime import diagnostics as D
from ..runtime.health import percentile
from .node_record import CameraRecord, CameraSpec, Frame, MethodRecord, MethodSpec

#: the node status keys node-bench keeps over time (``diag_timeline``)
TIMELINE_KEYS = (D.FRAMES_RECEIVED, D.FRAMES_PROCESSED, D.FRAMES_DROPPED, D.LATENCY_P50_MS, D.LATENCY_P95_MS,
                 D.MODEL_P50_MS, D.ADAPTATION_STEPS)
NODE_NOTE = ("latency/model p50 over the node's last 256 frames; latency = arrival in the node -> outputs "
             "published; model = Pipeline.infer (to_input + forward + post-processing)")


def latency(values: Sequence[float], with_max: bool = False) -> dict[str, float]:
    """p50 / p95 / mean (/ max) in ms, NaN when empty."""
    out = {"p50": percentile(values, 50, True), "p95": percentile(values, 95, True),
           "mean": float(np.mean(values)) if len(values) else float("nan")}
    if with_max:
        out["max"] = float(max(values)) if len(values) else float("nan")
    return out


def _count(values: dict[str, str], key: str) -> Optional[int]:
    """A node counter from a status (None where it has none)."""
    v = D.number(values, key)
    return None if np.isnan(v) else int(v)


def label_flicker(frames: Sequence[Frame], preds: dict[int, np.ndarray]) -> dict[str, Any]:
    """Label flicker of a node's outputs (docs/video.md), after the run so that the flow costs the
    node nothing: frame k against frame k-1 along the optical flow between the published images,
    where both were answered (the loop's wrap-around is no motion and is skipped)."""
    from ..engine.temporal import estimate_motion, to_gray, warp_nearest
    from ..metrics import Flicker

    flick, n = Flicker(), len(frames)
    for k in sorted(preds):
        if k - 1 not in preds or k % n == 0:
            continue
        prev, cur = frames[(k - 1) % n], frames[k % n]
        motion = estimate_motion(to_gray(prev[0]), to_gray(cur[0]))
        flick.add_along(preds[k], cur[1], preds[k - 1], prev[1], motion, warp_nearest, cur[2])
    return {"flicker": flick.overall(), "flicker_per_domain": flick.domains(),
            "flicker_frames": int(sum(flick.frames.values()))}


def method_result(spec: MethodSpec, rec: MethodRecord, frames: Sequence[Frame]) -> dict[str, Any]:
    """One method's entry of the report (``report["methods"][label]``)."""
    book = rec.book
    with book.lock:
        samples = list(book.samples)
        diag = dict(book.diag)
        diag_timeline = list(book.diag_timeline)
        total = book.scores.summary()
        per_domain = {d: {k: v[k] for k in ("miou", "acc")}
                      for d, v in ((d, book.scores.summary(d)) for d in book.scores.per_domain)}
        per_cycle = {d: book.cycles.summary(d)["miou"] for d in book.cycles.per_domain}
        phases, detected = book.detected_per_output()
        frame_scores = sorted(book.frame_scores)
        preds = dict(book.preds)

    def counter(key: str) -> Optional[int]:
        """A node counter summed over the processes of this run (a restart starts at 0)."""
        if not diag:
            return None
        return sum(_count(d, key) or 0 for d in rec.ended + [diag])

    lat = [s[1] for s in samples]
    times = [s[0] for s in samples]
    span = times[-1] if times else 0.0
    w = min(spec.window_s, max(span, 1e-9) / 3.0)
    first = [v for t, v in samples if t <= w]
    last = [v for t, v in samples if t >= span - w]
    rss = rec.rss_timeline
    rss_after_first = next((r for t, r in rss if t >= (times[0] if times else 0.0)), float("nan"))
    n, wall, matched = spec.n_frames, rec.publish_wall_s, len(samples)
    env = rec.node_env
    return {
        "method": spec.label, "engine_method": spec.method, "namespace": rec.namespace, "command": rec.command,
        "node_env": {k: env[k] for k in ("ROS_DOMAIN_ID", "OMP_NUM_THREADS") if k in env},
        "published": n, "publish_wall_s": wall, "publish_rate_hz": n / wall if wall else 0.0,
        "late_publish_ticks": rec.late_publish_ticks,
        "matched_stamps": matched, "unmatched_outputs": book.unmatched, "duplicate_outputs": book.duplicates,
        "stamps_out_of_order": book.stamps_out_of_order,
        "not_output": n - matched,
        "latency_ms": latency(lat, with_max=True),
        "growth": {"window_s": w, "first_p50_ms": percentile(first, 50, True), "last_p50_ms": percentile(last, 50, True),
                   "first_p95_ms": percentile(first, 95, True), "last_p95_ms": percentile(last, 95, True),
                   "last_over_first_p50": (percentile(last, 50, True) / percentile(first, 50, True)
                                           if first and last else float("nan")),
                   "rss_ready_mb": rec.rss_ready_mb, "rss_first_output_mb": rss_after_first,
                   "rss_end_mb": rec.rss_end_mb, "rss_max_mb": max((r for _, r in rss), default=float("nan"))},
        "miou": total["miou"], "acc": total["acc"], "miou_per_domain": per_domain,
        "miou_per_cycle": per_cycle, "restarts": [asdict(r) for r in rec.restarts],
        "frame_scores": frame_scores,
        **label_flicker(frames, preds),
        "detector": ({"phases": phases, "detected": detected, "domains_known": diag.get(D.DOMAINS_KNOWN),
                      "domain_switches": counter(D.DOMAIN_SWITCHES)} if detected else None),
        "node_diagnostics": {
            "frames_received": counter(D.FRAMES_RECEIVED),
            "frames_processed": counter(D.FRAMES_PROCESSED),
            "frames_dropped": counter(D.FRAMES_DROPPED),
            "lost_in_transport": counter(D.LOST_IN_TRANSPORT), "qos_rematches": counter(D.QOS_REMATCHES),
            "input_reliability": diag.get(D.INPUT_RELIABILITY),
            "latency_p50_ms": D.number(diag, D.LATENCY_P50_MS), "latency_p95_ms": D.number(diag, D.LATENCY_P95_MS),
            "model_p50_ms": D.number(diag, D.MODEL_P50_MS),
            "adaptation_steps": counter(D.ADAPTATION_STEPS),
            "mean_adapt_ms": D.number(diag, D.MEAN_ADAPT_MS), "device": diag.get(D.DEVICE),
            "selected_blocks": diag.get(D.SELECTED_BLOCKS), "inference_errors": diag.get(D.INFERENCE_ERRORS),
            "note": NODE_NOTE},
        "timeline": {"t_s": times, "latency_ms": lat}, "rss_timeline": rss,
        "diag_timeline": diag_timeline,
        "node_exit_code": rec.node_exit_code, "node_log_tail": rec.node_log_tail,
    }


def method_line(r: dict[str, Any]) -> str:
    """The log line of one method's result."""
    nd = r["node_diagnostics"]
    return (f"[node-bench] {r['method']}: {r['matched_stamps']}/{r['published']} outputs matched, p50 "
            f"{r['latency_ms']['p50']:.0f} ms p95 {r['latency_ms']['p95']:.0f} ms, node processed/dropped "
            f"{nd['frames_processed']}/{nd['frames_dropped']}, mIoU {r['miou']:.1f}")


def camera_result(spec: CameraSpec, rec: CameraRecord) -> dict[str, Any]:
    """One layout's entry of the camera report (``report["layouts"][name]``)."""
    owner = {c: name for name in spec.nodes for c in spec.cameras_of(name)}
    per_cam = {}
    for c in rec.cameras:
        book = rec.books[c]
        with book.lock:
            samples = list(book.samples)
            total = book.scores.summary()
            per_domain = {d: book.scores.summary(d)["miou"] for d in book.scores.per_domain}
        lat = [s[1] for s in samples]
        per_cam[c] = {"node": owner[c], "published": spec.n_frames, "matched": len(lat),
                      "not_output": spec.n_frames - len(lat), "latency_ms": latency(lat),
                      "miou": total["miou"], "miou_per_domain": per_domain,
                      "timeline": {"t_s": [s[0] for s in samples], "latency_ms": lat}}
    per_node = {n: {"cpu_s": u.cpu_s, "pid": u.pid, "rss_ready_mb": u.rss_ready_mb,
                    "rss_max_mb": max((x[1][n] for x in rec.rss_timeline), default=float("nan")),
                    **{k: _count(u.status, k) for k in (D.FRAMES_RECEIVED, D.FRAMES_PROCESSED, D.FRAMES_DROPPED,
                                                        D.ADAPTATION_STEPS)}}
                for n, u in rec.nodes.items()}
    return {"method": spec.label, "nodes": dict(spec.nodes), "cameras": rec.cameras,
            "publish_wall_s": rec.publish_wall_s, "late_publish_ticks": rec.late_publish_ticks,
            "per_camera": per_cam, "per_node": per_node,
            "rss_timeline": [(t, sum(v.values())) for t, v in rec.rss_timeline],
            "node_log_tail": rec.node_log_tail}


def cameras_line(r: dict[str, Any]) -> str:
    """The log line of one layout's result."""
    return (f"[node-bench] {r['method']}: " + "; ".join(
        f"{c} p50 {v['latency_ms']['p50']:.0f} ms, {v['matched']}/{v['published']} out, mIoU {v['miou']:.1f}"
        for c, v in r["per_camera"].items()) + f"; CPU {sum(x['cpu_s'] for x in r['per_node'].values()):.1f} s")
