"""The DDS side of ``tta-perception node-bench`` (the protocol and the report are ``bench.node``):
``tta_node`` started in its own process (``python -m tta_perception.ros.tta_node``) under a private
namespace and ``ROS_DOMAIN_ID`` (localhost discovery); this process publishes the frames at the
camera rate, records the publish time of each stamp, subscribes to ``class_ids`` and
``/diagnostics`` and samples the node's RSS once a second.

``measure_overheads`` times, in this process on one frame, the node's own per-frame code
(``ros.convert`` decoding, ``Pipeline.to_input``, the post-processing, message building and
``publish``) against the model forward (``adapter.predict``), because the node's diagnostics only
expose the whole ``Pipeline.infer`` time (``model_p50_ms``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from sensor_msgs.msg import Image

from ..runtime.health import percentile
from ..runtime.memory import rss_mb
from ..bench.node import safe_tag
from ..metrics import DomainScores, id_at, nearest_resize
from . import convert
from .diagnostics import Watch, node_values

NUM_CLASSES = 12


def measure_overhead(method: str = "source", size: tuple[int, int] = (128, 256), repeats: int = 60,
                     encoding: str = "bgra8", frame: Optional[np.ndarray] = None,
                     context: Any = None, torch_threads: int = 0,
                     outputs: Sequence[str] = ("class_ids", "confidence", "overlay")) -> dict[str, Any]:
    """Median ms per frame of each stage of the node's per-frame path, measured in this process.

    ``outputs``: the segmentation outputs someone subscribes to (the node computes the confidence
    and overlay maps only for subscribers); ``("class_ids",)`` is what ``node-bench`` listens to."""
    import torch
    from std_msgs.msg import Header

    from ..runtime import image_codec as codec
    from ..runtime import params as P
    from ..runtime.pipeline import Pipeline
    from .qos import output_qos

    cfg = P.defaults()
    cfg.update(method=method, device="cpu")
    threads_before = torch.get_num_threads()
    if torch_threads > 0:
        torch.set_num_threads(int(torch_threads))
    pipe = Pipeline(cfg)
    pipe.set_enabled(False)  # time inference, not background adaptation steps
    if frame is None:
        frame = (np.random.default_rng(0).random((size[0], size[1], 3)) * 255).astype(np.uint8)
    msg_in = convert.rgb_image(Header(frame_id="camera"), frame, encoding)

    pubs = None
    node = None
    if context is not None:
        from rclpy.node import Node

        node = Node(f"node_bench_overhead_{os.getpid()}", context=context)
        pubs = {n: node.create_publisher(Image, f"node_bench_overhead/{n}", output_qos()) for n in outputs}
    t: dict[str, list[float]] = {k: [] for k in ("decode", "to_input", "forward", "post", "messages",
                                                 "publish")}
    try:
        for i in range(repeats + 5):
            c0 = time.perf_counter()
            rgb = convert.rgb_of(msg_in, False, codec.DEFAULT_MAX_PIXELS)
            c1 = time.perf_counter()
            x = pipe.to_input(rgb)
            c2 = time.perf_counter()
            with torch.no_grad():
                logits = pipe.adapter.predict(x)
            c3 = time.perf_counter()
            res = pipe.postprocess(logits, rgb, x, output_size=cfg["output_size"], top_k=cfg["top_k"],
                                   overlay_alpha=cfg["overlay_alpha"], overlay="overlay" in outputs,
                                   confidence="confidence" in outputs, confidence_float=False)
            c4 = time.perf_counter()
            msgs = convert.segmentation_messages(res, Header(frame_id="camera"))
            c5 = time.perf_counter()
            if pubs is not None:
                for name, msg in msgs.items():
                    pubs[name].publish(msg)
            c6 = time.perf_counter()
            if i >= 5:  # warm-up
                for k, (a, b) in {"decode": (c0, c1), "to_input": (c1, c2), "forward": (c2, c3),
                                  "post": (c3, c4), "messages": (c4, c5), "publish": (c5, c6)}.items():
                    t[k].append((b - a) * 1e3)
    finally:
        if node is not None:
            node.destroy_node()
        pipe.close()
        threads_used = torch.get_num_threads()
        torch.set_num_threads(threads_before)
    med = {k: float(np.median(v)) for k, v in t.items()}
    publish = med["publish"] if pubs is not None else 0.0
    # the "conversion, publishing": the image in, the messages out
    conversion = med["decode"] + med["to_input"] + med["messages"] + publish
    # argmax / confidence / overlay / diagnostics statistics on the logits (``Pipeline.postprocess``)
    overhead = conversion + med["post"]
    fwd = med["forward"]
    return {"method": method, "size": list(size), "encoding": encoding, "repeats": repeats,
            "outputs": list(outputs), "torch_threads": threads_used,
            "decode_ms": med["decode"], "to_input_ms": med["to_input"], "model_forward_ms": fwd,
            "postprocess_ms": med["post"], "messages_ms": med["messages"],
            "publish_ms": med["publish"] if pubs is not None else float("nan"),
            "conversion_publishing_ms": conversion, "conversion_publishing_pct_of_model": 100.0 * conversion / fwd,
            "overhead_ms": overhead, "overhead_pct_of_model": 100.0 * overhead / fwd}


# ====================================================================== one method over DDS


def _spin_in_background(executor: Any, ctx: Any, stop: threading.Event) -> threading.Thread:
    """The benchmark's own executor on a daemon thread until ``stop``."""
    def spin() -> None:
        while not stop.is_set() and ctx.ok():
            try:
                executor.spin_once(timeout_sec=0.05)
            except Exception:  # shutdown races
                if stop.is_set():
                    return

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    return thread


class NodeProcess:
    """``tta_node`` in its own process (``python -m tta_perception.ros.tta_node``) under namespace
    ``ns`` on a private domain, its output collected by a thread; ``stop`` is SIGINT, then kill."""

    def __init__(self, ns: str, params: dict[str, Any], domain_id: int, torch_threads: int,
                 log: Callable[[str], None], label: str = "") -> None:
        env = dict(os.environ)
        env["ROS_DOMAIN_ID"] = str(domain_id)
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        if torch_threads > 0:  # intra-op threads of the node's torch (OMP/MKL read it at start-up)
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(torch_threads))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                        env.get("PYTHONPATH", "")) if p)
        cmd = [sys.executable, "-m", "tta_perception.ros.tta_node", "--ros-args", "-r", f"__ns:={ns}"]
        for k, v in params.items():
            cmd += ["-p", f"{k}:={json.dumps(v) if isinstance(v, (list, bool)) else v}"]
        log(f"[node-bench] {label}: starting {' '.join(cmd[1:])}")
        self.cmd, self.env, self.log = cmd, env, []
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=lambda: [self.log.append(line.rstrip()) for line in self.proc.stdout],
                         daemon=True).start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure_overheads(size: tuple[int, int], repeats: int, encoding: str, frame: np.ndarray, domain_id: int,
                      torch_threads: int = 0) -> dict[str, Any]:
    """``overhead`` (the outputs node-bench subscribes to: class_ids) and ``overhead_all_outputs``
    (every segmentation output subscribed), publishing on a private domain."""
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    try:
        return {key: measure_overhead("source", size, repeats, encoding, frame=frame, context=ctx,
                                      torch_threads=torch_threads, outputs=outputs)
                for key, outputs in (("overhead", ("class_ids",)),
                                     ("overhead_all_outputs", ("class_ids", "confidence", "overlay")))}
    finally:
        rclpy.try_shutdown(context=ctx)


#: label flicker is scored on the first outputs only (bounded memory: 3,000 maps of 128x256 are 98 MB)
FLICKER_FRAMES = 3000


def label_flicker(frames: Sequence[Any], preds: dict[int, np.ndarray]) -> dict[str, Any]:
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


class _Recorder:
    """Subscriber side: latency by stamp, online confusion matrix, the node's diagnostics."""

    def __init__(self, ns: str, truth: dict[int, tuple[np.ndarray, str, Optional[str]]], sent: dict[int, int],
                 t0: list[int]):
        self.ns, self.truth, self.sent, self.t0 = ns, truth, sent, t0
        self.lock = threading.Lock()
        self.scores = DomainScores(NUM_CLASSES)
        self.cycles = DomainScores(NUM_CLASSES)  # 'phase@cycle' keys (looping schedules, --cycles)
        self.domain_changes: list[tuple[int, int]] = []  # (stamp, detected id) from the ``domain`` topic
        self.matched_phases: list[tuple[int, str]] = []  # (stamp, true phase) of every scored output
        self.frame_scores: list[tuple[int, str, float]] = []  # (frame index, phase, the frame's mIoU %)
        self.samples: list[tuple[float, float]] = []  # (seconds since first publish, latency ms)
        self.matched: set[int] = set()
        self.unmatched = 0
        self.duplicates = 0
        self.stamps_out_of_order = 0
        self._last_stamp = -1
        self.diag: dict[str, str] = {}
        self.diag_timeline: list[dict[str, Any]] = []
        self.first_output = threading.Event()
        self.preds: dict[int, np.ndarray] = {}  # frame index -> class ids, for label flicker after the run

    def on_output(self, msg: Any) -> None:
        t_recv = time.monotonic_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            t_pub = self.sent.get(stamp)
            if t_pub is None or stamp not in self.truth:
                self.unmatched += 1
                return
            if stamp in self.matched:
                self.duplicates += 1
                return
            self.matched.add(stamp)
            if stamp < self._last_stamp:
                self.stamps_out_of_order += 1
            self._last_stamp = max(self._last_stamp, stamp)
            self.samples.append(((t_pub - self.t0[0]) / 1e9, (t_recv - t_pub) / 1e6))
            labels, domain, cycle_key, index = self.truth.pop(stamp)
        pred = convert.labels_of(msg)
        if pred.shape != labels.shape:
            pred = nearest_resize(pred, *labels.shape)
        with self.lock:
            frame = self.scores.add_frame(pred, labels, domain)
            self.frame_scores.append((index, domain, 100.0 * frame.miou()))
            if len(self.preds) < FLICKER_FRAMES:
                self.preds[index] = pred
            if cycle_key is not None:
                self.cycles.add_frame(pred, labels, cycle_key)
            self.matched_phases.append((stamp, domain))
        self.first_output.set()

    def on_domain(self, msg: Any) -> None:
        """Domain memory's ``domain`` topic: the detected id from the stamp of the frame it changed at."""
        try:
            info = json.loads(msg.data)
            stamp = int(info["stamp"]["sec"]) * 1_000_000_000 + int(info["stamp"]["nanosec"])
            with self.lock:
                self.domain_changes.append((stamp, int(info["id"])))
        except (ValueError, KeyError, TypeError):
            pass

    def detected_per_output(self) -> tuple[list[str], list[int]]:
        """True phase and detected domain id of every scored output after the detector's first
        report (the id in force at that frame's stamp)."""
        changes = sorted(self.domain_changes)
        stamps, ids = [s for s, _ in changes], [i for _, i in changes]
        pairs = [(phase, id_at(stamps, ids, stamp)) for stamp, phase in sorted(self.matched_phases)]
        return [p for p, i in pairs if i is not None], [i for _, i in pairs if i is not None]

    def on_diagnostics(self, msg: Any) -> None:
        values = node_values(msg, self.ns)
        if values is None:
            return
        with self.lock:
            self.diag = values
            self.diag_timeline.append({"t": (time.monotonic_ns() - self.t0[0]) / 1e9, **{
                k: values.get(k) for k in ("frames_received", "frames_processed", "frames_dropped",
                                           "latency_p50_ms", "latency_p95_ms", "model_p50_ms",
                                           "adaptation_steps")}})


def _f(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def run_method(method: str, frames: list[Any], n_frames: int, *, rate: float, encoding: str,
               device: str, domain_id: int, node_params: dict[str, Any], window_s: float,
               startup_timeout: float, drain_s: float, log: Callable[[str], None],
               torch_threads: int = 0, label: str = "", cycle_frames: Optional[int] = None,
               restart_at: Sequence[int] = (), save_path: str = "", publisher_qos: str = "reliable") -> dict[str, Any]:
    """One node process (``label``: the name in the report; ``node_params`` its parameters) fed
    ``n_frames`` frames at ``rate``. ``cycle_frames``: published frames per weather cycle, to score
    each phase per cycle ('phase@cycle'). ``restart_at``: frame indices before which the node saves
    its state (``~/save`` to ``save_path``), is killed with SIGKILL and restarts with
    ``resume_from`` (publishing waits meanwhile)."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.event_handler import PublisherEventCallbacks
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header, String
    from std_srvs.srv import Trigger

    from .qos import latched_qos, output_qos

    label = label or method
    ns = f"/node_bench_{os.getpid()}_{safe_tag(label)}"
    params = {"method": method, "device": device, "diagnostics_period": 1.0}
    params.update(node_params)
    restart_at = sorted({int(k) for k in restart_at if 0 < int(k) < n_frames})
    if restart_at:
        if not save_path:
            raise ValueError("restarts need a save_path")
        params["save_path"] = str(save_path)
        params["state_dir"] = str(Path(save_path).parent)  # ~/save writes only there
    node_proc = NodeProcess(ns, params, domain_id, torch_threads, log, label=label)
    cmd, env = node_proc.cmd, node_proc.env
    holder = [node_proc]  # the running node process (a restart replaces it)

    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    truth: dict[int, tuple[np.ndarray, str]] = {}
    sent: dict[int, int] = {}
    t0 = [time.monotonic_ns()]
    rec = _Recorder(ns, truth, sent, t0)
    node = Node(f"node_bench_{os.getpid()}", context=ctx)
    img_qos = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST,
                         reliability=(ReliabilityPolicy.RELIABLE if publisher_qos == "reliable"
                                      else ReliabilityPolicy.BEST_EFFORT))
    # every match counted: after a SIGKILL the dead node's subscription stays matched until its
    # lease ends, so only a new match says the restarted node listens
    matches = [0]
    pub = node.create_publisher(Image, f"{ns}/image", img_qos, event_callbacks=PublisherEventCallbacks(
        matched=lambda info: matches.__setitem__(0, int(info.total_count))))
    node.create_subscription(Image, f"{ns}/class_ids", rec.on_output, output_qos(depth=50))
    node.create_subscription(DiagnosticArray, "/diagnostics", rec.on_diagnostics, 50)
    node.create_subscription(String, f"{ns}/domain", rec.on_domain, latched_qos(depth=5))
    save_client = node.create_client(Trigger, f"{ns}/tta_node/save")
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    stop = threading.Event()

    spinner = _spin_in_background(executor, ctx, stop)
    rss: list[tuple[float, float]] = []
    restarts: list[dict[str, Any]] = []
    segments: list[dict[str, str]] = []  # the last /diagnostics of each node process a restart ended
    result: dict[str, Any] = {"method": label, "engine_method": method, "namespace": ns, "command": cmd,
                              "node_env": {k: env[k] for k in ("ROS_DOMAIN_ID", "OMP_NUM_THREADS") if k in env}}

    def running() -> Any:
        return holder[0].proc

    def node_log() -> list[str]:
        return holder[0].log

    def wait_active(since: int, matched: int = 0) -> None:
        """Until a /diagnostics message newer than ``since`` says the node is active and our
        publisher has matched more subscriptions than ``matched`` (the restarted node's, not the
        dead one's)."""
        deadline = time.monotonic() + startup_timeout
        while True:
            with rec.lock:
                fresh = (len(rec.diag_timeline) > since and rec.diag.get("state") == "active"
                         and int(_f(rec.diag.get("input_publishers", 1))) >= 1)  # it has matched us too
            if fresh and pub.get_subscription_count() >= 1 and matches[0] > matched:
                return
            if running().poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tta_node ({label}) did not start: " + " | ".join(node_log()[-5:]))
            time.sleep(0.1)

    def save_kill_restart(k: int) -> None:
        """``~/save``, SIGKILL (no clean shutdown), a new process with ``resume_from``."""
        time.sleep(drain_s)  # outputs in flight
        with rec.lock:
            seen = len(rec.diag_timeline)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:  # counters published after the last frame
            with rec.lock:
                if len(rec.diag_timeline) >= seen + 2:
                    break
            time.sleep(0.05)
        with rec.lock:
            before = dict(rec.diag)
        t_save = time.monotonic()
        if not save_client.wait_for_service(timeout_sec=10.0):
            raise RuntimeError(f"tta_node ({label}): no ~/save service")
        future = save_client.call_async(Trigger.Request())
        answered = threading.Event()
        future.add_done_callback(lambda _f: answered.set())
        if not answered.wait(60.0):
            raise RuntimeError(f"tta_node ({label}): ~/save did not answer in 60 s")
        answer = future.result()
        save_s = time.monotonic() - t_save
        if not answer.success:
            raise RuntimeError(f"tta_node ({label}): ~/save failed: {answer.message}")
        old = running()
        matched = matches[0]
        old.send_signal(signal.SIGKILL)
        old.wait()
        segments.append(before)
        with rec.lock:
            since = len(rec.diag_timeline)
        t_start = time.monotonic()
        holder[0] = NodeProcess(ns, {**params, "resume_from": str(save_path)}, domain_id, torch_threads, log,
                                label=f"{label} (restart {len(restarts) + 1}, resume_from)")
        wait_active(since, matched)
        time.sleep(0.5)
        with rec.lock:
            after = dict(rec.diag)
        restarts.append({"before_frame": k, "save_s": save_s, "save_message": answer.message,
                         "killed_exit_code": old.returncode, "restart_s": time.monotonic() - t_start,
                         "pid": running().pid, "domains_known_before": before.get("domains_known"),
                         "domains_known_after": after.get("domains_known"),
                         "adaptation_steps_before": before.get("adaptation_steps")})
        log(f"[node-bench] {label}: before frame {k}: saved in {save_s:.1f} s ({answer.message}), killed "
            f"(exit {old.returncode}), restarted with resume_from in {restarts[-1]['restart_s']:.1f} s"
            + (f"; domains known {before.get('domains_known')} -> {after.get('domains_known')}"
               if before.get("domains_known") is not None else ""))

    try:
        wait_active(0)
        time.sleep(0.5)  # let the node's output publishers match ours
        rss_start_idle = rss_mb(running().pid)
        log(f"[node-bench] {label}: node ready (pid {running().pid}, RSS {rss_start_idle:.0f} MB); "
            f"publishing {n_frames} frames at {rate:g} Hz")

        def sample_rss() -> None:
            while not stop.is_set():
                rss.append(((time.monotonic_ns() - t0[0]) / 1e9, rss_mb(running().pid)))
                stop.wait(1.0)
        period = 1.0 / rate
        t0[0] = time.monotonic_ns()
        threading.Thread(target=sample_rss, daemon=True).start()
        base_ns = time.time_ns()
        start = time.monotonic()
        paused = 0.0  # seconds spent restarting: not publishing time
        late = 0
        next_report = start + 30.0
        for k in range(n_frames):
            if restart_at and k == restart_at[0]:
                restart_at.pop(0)
                t_pause = time.monotonic()
                save_kill_restart(k)
                paused += time.monotonic() - t_pause
                start += time.monotonic() - t_pause
            target = start + k * period
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                late += 1
            rgb, labels, domain = frames[k % len(frames)][:3]
            cycle_key = f"{domain}@{k // cycle_frames + 1}" if cycle_frames else None
            stamp = base_ns + k * int(period * 1e9)  # unique, monotonic stamps
            header = Header(frame_id="camera")
            header.stamp.sec, header.stamp.nanosec = stamp // 1_000_000_000, stamp % 1_000_000_000
            msg = convert.rgb_image(header, rgb, encoding)
            with rec.lock:
                truth[stamp] = (labels, domain, cycle_key, k)
                sent[stamp] = time.monotonic_ns()  # publish time, recorded at send
            pub.publish(msg)
            if len(truth) > 600:  # bounded: outputs older than 60 s never come
                with rec.lock:
                    for old in sorted(truth)[:len(truth) - 600]:
                        truth.pop(old, None)
            if time.monotonic() >= next_report:
                next_report += 30.0
                with rec.lock:
                    lat = [s[1] for s in rec.samples[-300:]]
                log(f"[node-bench] {label}: {k + 1}/{n_frames} sent, {len(rec.matched)} outputs, "
                    f"recent p50 {percentile(lat, 50, True):.0f} ms, node RSS {rss_mb(running().pid):.0f} MB")
        wall = time.monotonic() - start
        time.sleep(drain_s)  # outputs in flight, and one more /diagnostics
        n_diag = len(rec.diag_timeline)
        wait_until = time.monotonic() + 3.0
        while len(rec.diag_timeline) == n_diag and time.monotonic() < wait_until:
            time.sleep(0.1)
        rss_end = rss_mb(running().pid)
        if running().poll() is not None:
            raise RuntimeError(f"tta_node ({label}) exited early: " + " | ".join(node_log()[-5:]))
        with rec.lock:
            samples = list(rec.samples)
            diag = dict(rec.diag)
            diag_timeline = list(rec.diag_timeline)
            total = rec.scores.summary()
            per_domain = {d: {k: v[k] for k in ("miou", "acc")}
                          for d, v in ((d, rec.scores.summary(d)) for d in rec.scores.per_domain)}
            per_cycle = {d: rec.cycles.summary(d)["miou"] for d in rec.cycles.per_domain}
            phases, detected = rec.detected_per_output()
            frame_scores = sorted(rec.frame_scores)
            preds = dict(rec.preds)

        def counter(key: str) -> Optional[int]:
            """A node counter summed over the processes of this run (a restart starts at 0)."""
            if not diag:
                return None
            return sum(int(_f(d.get(key, 0)) if d.get(key) is not None else 0) for d in segments + [diag])
        lat = [s[1] for s in samples]
        times = [s[0] for s in samples]
        span = times[-1] if times else 0.0
        w = min(window_s, max(span, 1e-9) / 3.0)
        first = [l for t, l in samples if t <= w]
        last = [l for t, l in samples if t >= span - w]
        rss_after_first = next((r for t, r in rss if t >= (times[0] if times else 0.0)), float("nan"))
        matched = len(samples)
        result.update({
            "published": n_frames, "publish_wall_s": wall, "publish_rate_hz": n_frames / wall if wall else 0.0,
            "late_publish_ticks": late,
            "matched_stamps": matched, "unmatched_outputs": rec.unmatched, "duplicate_outputs": rec.duplicates,
            "stamps_out_of_order": rec.stamps_out_of_order,
            "not_output": n_frames - matched,
            "latency_ms": {"p50": percentile(lat, 50, True), "p95": percentile(lat, 95, True), "mean": float(np.mean(lat)) if lat else
                           float("nan"), "max": float(max(lat)) if lat else float("nan")},
            "growth": {"window_s": w, "first_p50_ms": percentile(first, 50, True), "last_p50_ms": percentile(last, 50, True),
                       "first_p95_ms": percentile(first, 95, True), "last_p95_ms": percentile(last, 95, True),
                       "last_over_first_p50": percentile(last, 50, True) / percentile(first, 50, True) if first and last else float("nan"),
                       "rss_ready_mb": rss_start_idle, "rss_first_output_mb": rss_after_first,
                       "rss_end_mb": rss_end, "rss_max_mb": max((r for _, r in rss), default=float("nan"))},
            "miou": total["miou"], "acc": total["acc"], "miou_per_domain": per_domain,
            "miou_per_cycle": per_cycle, "restarts": restarts, "frame_scores": frame_scores,
            **label_flicker(frames, preds),
            "detector": ({"phases": phases, "detected": detected,
                          "domains_known": diag.get("domains_known"), "domain_switches": counter("domain_switches")}
                         if detected else None),
            "node_diagnostics": {
                "frames_received": counter("frames_received"),
                "frames_processed": counter("frames_processed"),
                "frames_dropped": counter("frames_dropped"),
                "lost_in_transport": counter("lost_in_transport"), "qos_rematches": counter("qos_rematches"),
                "input_reliability": diag.get("input_reliability"),
                "latency_p50_ms": _f(diag.get("latency_p50_ms")), "latency_p95_ms": _f(diag.get("latency_p95_ms")),
                "model_p50_ms": _f(diag.get("model_p50_ms")),
                "adaptation_steps": counter("adaptation_steps"),
                "mean_adapt_ms": _f(diag.get("mean_adapt_ms")), "device": diag.get("device"),
                "selected_blocks": diag.get("selected_blocks"), "inference_errors": diag.get("inference_errors"),
                "note": "latency/model p50 over the node's last 256 frames; latency = arrival in the "
                        "node -> outputs published; model = Pipeline.infer (to_input + forward + "
                        "post-processing)"},
            "timeline": {"t_s": times, "latency_ms": lat}, "rss_timeline": rss,
            "diag_timeline": diag_timeline,
        })
        log(f"[node-bench] {label}: {matched}/{n_frames} outputs matched, p50 "
            f"{result['latency_ms']['p50']:.0f} ms p95 {result['latency_ms']['p95']:.0f} ms, node "
            f"processed/dropped {result['node_diagnostics']['frames_processed']}/"
            f"{result['node_diagnostics']['frames_dropped']}, mIoU {result['miou']:.1f}")
    finally:
        stop.set()
        holder[0].stop()
        spinner.join(timeout=2.0)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        result["node_exit_code"] = running().returncode
        result["node_log_tail"] = node_log()[-8:]
    return result


# ====================================================================== the whole benchmark


def run_memory_sweep(steps: Sequence[dict[str, Any]], *, node_params: dict[str, Any], domain_id: int,
                     log: Callable[[str], None], torch_threads: int = 0, rate: float = 4.0,
                     frames_per_step: int = 10, step_timeout: float = 240.0,
                     startup_timeout: float = 120.0) -> dict[str, Any]:
    """One node process taken through ``steps`` over DDS (the protocol is ``bench.memory``).

    A step is ``{"name", "candidates": [params, ...], "frame_size": (H, W) or "input"}``: the
    candidates are offered in turn with ``set_parameters_atomically`` until the node accepts one
    (each refusal is recorded with its reason); the accepted configuration then runs
    ``frames_per_step`` frames (of the model's input size for ``"input"``) until it has adapted at
    least once. The node's RSS is sampled every 50 ms: the peak and the end value of each step."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rcl_interfaces.srv import SetParametersAtomically
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Header

    ns = f"/node_bench_mem_{os.getpid()}"
    node_proc = NodeProcess(ns, {"diagnostics_period": 0.5, **node_params}, domain_id, torch_threads, log,
                            label="memory")
    proc = node_proc.proc
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    node = Node(f"node_bench_mem_{os.getpid()}", context=ctx)
    pub = node.create_publisher(Image, f"{ns}/image", QoSProfile(
        depth=2, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE))
    diag = Watch(ns)

    node.create_subscription(DiagnosticArray, "/diagnostics", diag, 20)
    client = node.create_client(SetParametersAtomically, f"{ns}/tta_node/set_parameters_atomically")
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    stop = threading.Event()
    peak = [0.0]

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], rss_mb(proc.pid) or 0.0)

    def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("tta_node exited: " + " | ".join(node_proc.log[-5:]))
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def offer(params: dict[str, Any]) -> tuple[bool, str]:
        request = SetParametersAtomically.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in params.items()])
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(60):
            raise RuntimeError("no answer from set_parameters_atomically")
        result = future.result().result
        return bool(result.successful), str(result.reason)

    _spin_in_background(executor, ctx, stop)
    threading.Thread(target=sample, daemon=True).start()
    rows: list[dict[str, Any]] = []
    try:
        if not wait_for(lambda: pub.get_subscription_count() > 0 and client.service_is_ready()
                        and diag.get("state") == "active", startup_timeout):
            raise RuntimeError("tta_node did not start: " + " | ".join(node_proc.log[-5:]))
        baseline = rss_mb(proc.pid)
        log(f"[node-bench] memory: node ready, RSS {baseline:.0f} MB")
        rng = np.random.default_rng(0)
        stamp = 1
        for step in steps:
            row: dict[str, Any] = {"name": step["name"], "refused": []}
            accepted = None
            for params in step["candidates"]:
                ok, reason = offer(params) if params else (True, "")
                if ok:
                    accepted = params
                    break
                row["refused"].append({"params": params, "reason": reason})
            row["params"] = accepted
            if accepted is None:
                row.update(accepted=False, rss_end_mb=rss_mb(proc.pid))
                log(f"[node-bench] memory: {step['name']}: every candidate refused")
                rows.append(row)
                continue
            seen = diag.count
            wait_for(lambda: diag.count >= seen + 2 and diag.get("reloading") == "false", step_timeout)
            size = tuple(diag.get("input_size", "128x256").split("x"))
            h, w = (int(size[0]), int(size[1])) if step.get("frame_size", "input") == "input" else step["frame_size"]
            base = (rng.random((h // 8 + 1, w // 8 + 1, 3)) * 255).astype(np.uint8)
            rgb = np.ascontiguousarray(base.repeat(8, 0).repeat(8, 1)[:h, :w])
            count = diag.counter

            steps_before, processed_before = count("adaptation_steps"), count("frames_processed")
            peak[0] = rss_mb(proc.pid)
            t0 = time.monotonic()
            adapts = diag.get("method") not in ("source",)

            def done() -> bool:
                return count("frames_processed") > processed_before and (
                    not adapts or count("adaptation_steps") > steps_before)

            sent = 0
            # at least frames_per_step frames, and on until it has predicted and adapted
            while (sent < frames_per_step or not done()) and time.monotonic() - t0 < step_timeout:
                if proc.poll() is not None:
                    raise RuntimeError("tta_node exited: " + " | ".join(node_proc.log[-5:]))
                header = Header(frame_id="camera")
                header.stamp.sec = stamp
                stamp += 1
                pub.publish(convert.rgb_image(header, rgb, "rgb8"))
                sent += 1
                time.sleep(1.0 / rate)
            row.update(accepted=True, frames_sent=sent, frame_size=[h, w], input_size=diag.get("input_size"),
                       method=diag.get("method"), window=step.get("window"),
                       adaptation_steps=count("adaptation_steps") - steps_before,
                       frames_processed=count("frames_processed") - processed_before,
                       rss_peak_mb=peak[0], rss_end_mb=rss_mb(proc.pid), seconds=time.monotonic() - t0,
                       reload_failures=int(float(diag.get("reload_failures", 0) or 0)))
            log(f"[node-bench] memory: {step['name']}: {accepted} -> peak RSS {row['rss_peak_mb']:.0f} MB "
                f"({row['adaptation_steps']} adaptation steps)")
            rows.append(row)
    finally:
        stop.set()
        node_proc.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    return {"baseline_rss_mb": baseline if rows else float("nan"), "steps": rows,
            "node_exit_code": proc.returncode, "node_log_tail": node_proc.log[-8:]}


# ====================================================================== several cameras


def run_cameras(method: str, frames: dict[str, list[Any]], n_frames: int, nodes: dict[str, Optional[list[str]]], *,
                rate: float, encoding: str, device: str, domain_id: int, node_params: dict[str, Any],
                startup_timeout: float, drain_s: float, log: Callable[[str], None], torch_threads: int = 0,
                label: str = "") -> dict[str, Any]:
    """Node processes fed the frames of several cameras at ``rate``, the same stamp for every camera
    of a tick. ``nodes``: node label -> its cameras (a list: the ``cameras`` parameter, topics
    ``C/image``; None: a single-camera node of the camera named by the label, topic ``image``). Per
    camera: latency, outputs, online mIoU; per node: CPU seconds while publishing (``/proc``),
    RSS once a second, the node's counters."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Header

    from ..bench.node import cpu_seconds
    from .qos import output_qos

    label = label or method
    base = f"/node_bench_{os.getpid()}_{safe_tag(label)}"
    procs: dict[str, NodeProcess] = {}
    topic: dict[str, str] = {}          # camera -> its topic prefix
    owner: dict[str, str] = {}          # camera -> node label
    for name, cams in nodes.items():
        ns = f"{base}_{safe_tag(name)}"
        params = {"method": method, "device": device, "diagnostics_period": 1.0, **node_params}
        if cams is not None:
            params["cameras"] = list(cams)
        for c in (cams if cams is not None else [name]):
            topic[c], owner[c] = (f"{ns}/{c}" if cams is not None else ns), name
        procs[name] = NodeProcess(ns, params, domain_id, torch_threads, log, label=f"{label} {name}")
    cams = [c for c in frames if c in topic]
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    t0 = [time.monotonic_ns()]
    truth = {c: {} for c in cams}
    sent = {c: {} for c in cams}
    recs = {c: _Recorder(base, truth[c], sent[c], t0) for c in cams}
    diag: dict[str, dict[str, str]] = {}     # node label -> its last node-level status values
    ns_of = {name: f"{base}_{safe_tag(name)}" for name in nodes}
    lock = threading.Lock()

    def on_diag(msg: Any) -> None:
        for status in msg.status:
            for name, ns in ns_of.items():
                if status.name == f"tta_perception: {ns}/tta_node":
                    with lock:
                        diag[name] = {kv.key: kv.value for kv in status.values}

    node = Node(f"node_bench_{os.getpid()}", context=ctx)
    img_qos = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {c: node.create_publisher(Image, f"{topic[c]}/image", img_qos) for c in cams}
    for c in cams:
        node.create_subscription(Image, f"{topic[c]}/class_ids", recs[c].on_output, output_qos(depth=50))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    stop = threading.Event()
    spinner = _spin_in_background(executor, ctx, stop)
    rss: list[tuple[float, dict[str, float]]] = []
    result: dict[str, Any] = {"method": label, "nodes": {k: v for k, v in nodes.items()}, "cameras": cams}
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            with lock:
                ready = all(diag.get(n, {}).get("state") == "active" for n in nodes)
            if ready and all(p.get_subscription_count() >= 1 for p in pubs.values()):
                break
            dead = [n for n, p in procs.items() if p.proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                n = (dead or list(procs))[0]
                raise RuntimeError(f"tta_node ({label} {n}) did not start: " + " | ".join(procs[n].log[-5:]))
            time.sleep(0.1)
        time.sleep(0.5)
        rss_ready = {n: rss_mb(p.proc.pid) for n, p in procs.items()}
        log(f"[node-bench] {label}: {len(procs)} node(s) ready (RSS {sum(rss_ready.values()):.0f} MB); publishing "
            f"{n_frames} frames at {rate:g} Hz to each of {len(cams)} cameras")

        def sample_rss() -> None:
            while not stop.is_set():
                rss.append(((time.monotonic_ns() - t0[0]) / 1e9, {n: rss_mb(p.proc.pid) for n, p in procs.items()}))
                stop.wait(1.0)
        period = 1.0 / rate
        cpu0 = {n: cpu_seconds(p.proc.pid) for n, p in procs.items()}
        t0[0] = time.monotonic_ns()
        threading.Thread(target=sample_rss, daemon=True).start()
        base_ns = time.time_ns()
        start = time.monotonic()
        late = 0
        for k in range(n_frames):
            delay = start + k * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                late += 1
            stamp = base_ns + k * int(period * 1e9)
            for c in cams:
                rgb, labels, domain = frames[c][k % len(frames[c])][:3]
                header = Header(frame_id=c)
                header.stamp.sec, header.stamp.nanosec = stamp // 1_000_000_000, stamp % 1_000_000_000
                msg = convert.rgb_image(header, rgb, encoding)
                with recs[c].lock:
                    truth[c][stamp] = (labels, domain, None, k)
                    sent[c][stamp] = time.monotonic_ns()
                pubs[c].publish(msg)
                if len(truth[c]) > 600:
                    with recs[c].lock:
                        for old in sorted(truth[c])[:len(truth[c]) - 600]:
                            truth[c].pop(old, None)
        wall = time.monotonic() - start
        time.sleep(drain_s)
        cpu1 = {n: cpu_seconds(p.proc.pid) for n, p in procs.items()}
        n_diag = dict(diag)
        wait_until = time.monotonic() + 3.0
        while time.monotonic() < wait_until:  # one more /diagnostics of every node
            with lock:
                if all(diag.get(n) is not n_diag.get(n) for n in nodes):
                    break
            time.sleep(0.1)
        for n, p in procs.items():
            if p.proc.poll() is not None:
                raise RuntimeError(f"tta_node ({label} {n}) exited early: " + " | ".join(p.log[-5:]))
        per_cam = {}
        for c in cams:
            r = recs[c]
            with r.lock:
                lat = [s[1] for s in r.samples]
                total = r.scores.summary()
                per_domain = {d: r.scores.summary(d)["miou"] for d in r.scores.per_domain}
            per_cam[c] = {"node": owner[c], "published": n_frames, "matched": len(lat), "not_output": n_frames - len(lat),
                          "latency_ms": {"p50": percentile(lat, 50, True), "p95": percentile(lat, 95, True),
                                         "mean": float(np.mean(lat)) if lat else float("nan")},
                          "miou": total["miou"], "miou_per_domain": per_domain,
                          "timeline": {"t_s": [s[0] for s in r.samples], "latency_ms": lat}}
        with lock:
            last = {n: dict(diag.get(n, {})) for n in nodes}
        per_node = {n: {"cpu_s": cpu1[n] - cpu0[n], "pid": procs[n].proc.pid,
                        "rss_ready_mb": rss_ready[n], "rss_max_mb": max((x[1][n] for x in rss), default=float("nan")),
                        **{k: int(_f(last[n].get(k, "nan"))) if not np.isnan(_f(last[n].get(k, "nan"))) else None
                           for k in ("frames_received", "frames_processed", "frames_dropped", "adaptation_steps")}}
                    for n in nodes}
        result.update({"publish_wall_s": wall, "late_publish_ticks": late, "per_camera": per_cam, "per_node": per_node,
                       "rss_timeline": [(t, sum(v.values())) for t, v in rss]})
        log(f"[node-bench] {label}: " + "; ".join(
            f"{c} p50 {v['latency_ms']['p50']:.0f} ms, {v['matched']}/{n_frames} out, mIoU {v['miou']:.1f}"
            for c, v in per_cam.items()) + f"; CPU {sum(x['cpu_s'] for x in per_node.values()):.1f} s")
    finally:
        stop.set()
        for p in procs.values():
            p.stop()
        spinner.join(timeout=2.0)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        result["node_log_tail"] = {n: p.log[-5:] for n, p in procs.items()}
    return result
