"""End-to-end benchmark of ``tta_node`` over DDS: publish -> node (own process) -> output.

For each method (``source``, ``dplot``, ...) in turn, on the same pre-rendered frames:

- the ``dynamic`` sequence of the embedded world is rendered first (``frame_stride`` 2, as the weather
  loop does; at most ``unique_frames`` distinct frames, looped for longer runs), so publishing is
  never limited by rendering;
- ``tta_node`` is started in a separate process (``python -m tta_perception.ros.tta_node``) under a
  private namespace and a private ``ROS_DOMAIN_ID`` (localhost discovery);
- this process publishes ``sensor_msgs/Image`` (bgra8 by default, as CARLA sends) at ``rate`` Hz,
  recording the monotonic publish time of each stamp at send;
- it subscribes to the node's ``class_ids`` and ``/diagnostics``: for every output, the
  publish->output latency (matched by stamp) and the online confusion matrix against the ground truth
  of that stamp; the node's own counters (received/processed/dropped, latency and model p50); the RSS
  of the node process once a second.

``measure_overhead`` times, in this process on one frame, the node's conversion and publishing code
(``image_codec``, ``Pipeline.to_input``, the post-processing in ``Pipeline.infer``, message building
and ``publish``) against the model forward (``adapter.predict``), because the node's diagnostics only
expose the whole ``Pipeline.infer`` time (``model_p50_ms``).

Used by ``tta-perception node-bench``; returns a JSON-able dict and writes ``node_bench.json`` and
``node_bench.png`` under ``out``.
"""
from __future__ import annotations

import array
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

NUM_CLASSES = 12


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def render_frames(schedule: str, count: int, size: tuple[int, int], stride: int = 2,
                  workers: int = 2, log: Callable[[str], None] = print) -> list[Any]:
    """``count`` frames ``0, stride, 2*stride, ...`` of ``schedule`` (rgb, labels, domain)."""
    from tta_perception.world.sequences import iter_sequence

    t0 = time.monotonic()
    frames = [(f.rgb, f.labels, f.domain) for f in iter_sequence(
        schedule, size=size, start=0, stop=count * stride, stride=stride, workers=workers)]
    log(f"[node-bench] rendered {len(frames)} frames of {schedule!r} ({size[0]}x{size[1]}, stride "
        f"{stride}) in {time.monotonic() - t0:.1f} s")
    return frames


# ====================================================================== overhead (in process)
def measure_overhead(method: str = "source", size: tuple[int, int] = (128, 256), repeats: int = 60,
                     encoding: str = "bgra8", frame: Optional[np.ndarray] = None,
                     context: Any = None, torch_threads: int = 0,
                     outputs: Sequence[str] = ("class_ids", "confidence", "overlay")) -> dict[str, Any]:
    """Median ms per frame of each stage of the node's per-frame path, measured in this process.

    ``outputs``: the segmentation outputs someone subscribes to (the node computes the confidence
    and overlay maps only for subscribers); ``("class_ids",)`` is what ``node-bench`` listens to."""
    import array

    import torch
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from . import image_codec as codec
    from . import params as P
    from .pipeline import Pipeline
    from .qos import output_qos

    cfg = {s.name: (list(s.default) if isinstance(s.default, (list, tuple)) else s.default) for s in P.SPECS}
    cfg.update(method=method, device="cpu")
    threads_before = torch.get_num_threads()
    if torch_threads > 0:
        torch.set_num_threads(int(torch_threads))
    pipe = Pipeline(cfg)
    pipe.set_enabled(False)  # time inference, not background adaptation steps
    if frame is None:
        frame = (np.random.default_rng(0).random((size[0], size[1], 3)) * 255).astype(np.uint8)
    h, w, step, data = codec.rgb_to_raw(frame, encoding)
    buf = array.array("B")
    buf.frombytes(data)

    def image(header, enc, height, width, st, payload, big=False):
        msg = Image(header=header, height=height, width=width, encoding=enc, is_bigendian=bool(big), step=st)
        b = array.array("B")
        b.frombytes(payload)
        msg.data = b
        return msg

    pubs = None
    node = None
    if context is not None:
        from rclpy.node import Node

        node = Node(f"node_bench_overhead_{os.getpid()}", context=context)
        pubs = [node.create_publisher(Image, f"node_bench_overhead/{n}", output_qos()) for n in outputs]
    t: dict[str, list[float]] = {k: [] for k in ("decode", "to_input", "forward", "post", "messages",
                                                 "publish")}
    try:
        for i in range(repeats + 5):
            c0 = time.perf_counter()
            rgb = codec.raw_to_rgb(encoding, h, w, step, buf, codec.DEFAULT_MAX_PIXELS)
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
            header = Header(frame_id="camera")
            msgs = [image(header, "mono8", *codec.mono8(res.class_ids))]
            if res.confidence_u8 is not None:
                msgs.append(image(header, "mono8", *codec.mono8(res.confidence_u8)))
            if res.overlay is not None:
                msgs.append(image(header, "rgb8", *codec.rgb8(res.overlay)))
            c5 = time.perf_counter()
            if pubs is not None:
                for pub, msg in zip(pubs, msgs):
                    pub.publish(msg)
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
class _Recorder:
    """Subscriber side: latency by stamp, online confusion matrix, the node's diagnostics."""

    def __init__(self, ns: str, truth: dict[int, tuple[np.ndarray, str]], sent: dict[int, int], t0: list[int]):
        from tta_perception.metrics import ConfusionMatrix

        self.ns, self.truth, self.sent, self.t0 = ns, truth, sent, t0
        self.lock = threading.Lock()
        self.cm = ConfusionMatrix(NUM_CLASSES)
        self.cm_domain: dict[str, Any] = {}
        self._CM = ConfusionMatrix
        self.samples: list[tuple[float, float]] = []  # (seconds since first publish, latency ms)
        self.matched: set[int] = set()
        self.unmatched = 0
        self.duplicates = 0
        self.stamps_out_of_order = 0
        self._last_stamp = -1
        self.diag: dict[str, str] = {}
        self.diag_timeline: list[dict[str, Any]] = []
        self.first_output = threading.Event()

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
            labels, domain = self.truth.pop(stamp)
        pred = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, :msg.width]
        if pred.shape != labels.shape:
            from .scoring import nearest_resize

            pred = nearest_resize(pred, *labels.shape)
        with self.lock:
            self.cm.update(pred, labels)
            self.cm_domain.setdefault(domain, self._CM(NUM_CLASSES)).update(pred, labels)
        self.first_output.set()

    def on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if self.ns in status.name and "tta_node" in status.name:
                values = {kv.key: kv.value for kv in status.values}
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
               torch_threads: int = 0) -> dict[str, Any]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from . import image_codec as codec
    from .qos import output_qos

    ns = f"/node_bench_{os.getpid()}_{method}"
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if torch_threads > 0:  # intra-op threads of the node's torch (OMP/MKL read it at start-up)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(torch_threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                    env.get("PYTHONPATH", "")) if p)
    params = {"method": method, "device": device, "diagnostics_period": 1.0}
    params.update(node_params)
    cmd = [sys.executable, "-m", "tta_perception.ros.tta_node", "--ros-args", "-r", f"__ns:={ns}"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={json.dumps(v) if isinstance(v, (list, bool)) else v}"]
    log(f"[node-bench] {method}: starting {' '.join(cmd[1:])}")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node_log: list[str] = []
    log_thread = threading.Thread(target=lambda: [node_log.append(line.rstrip()) for line in proc.stdout],
                                  daemon=True)
    log_thread.start()

    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    truth: dict[int, tuple[np.ndarray, str]] = {}
    sent: dict[int, int] = {}
    t0 = [time.monotonic_ns()]
    rec = _Recorder(ns, truth, sent, t0)
    node = Node(f"node_bench_{os.getpid()}", context=ctx)
    img_qos = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(Image, f"{ns}/image", img_qos)
    node.create_subscription(Image, f"{ns}/class_ids", rec.on_output, output_qos(depth=50))
    node.create_subscription(DiagnosticArray, "/diagnostics", rec.on_diagnostics, 50)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set() and ctx.ok():
            try:
                executor.spin_once(timeout_sec=0.1)
            except Exception:  # shutdown races
                if stop.is_set():
                    return
    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    rss: list[tuple[float, float]] = []
    result: dict[str, Any] = {"method": method, "namespace": ns, "command": cmd,
                              "node_env": {k: env[k] for k in ("ROS_DOMAIN_ID", "OMP_NUM_THREADS") if k in env}}
    try:
        deadline = time.monotonic() + startup_timeout
        while pub.get_subscription_count() < 1:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tta_node ({method}) did not start: " + " | ".join(node_log[-5:]))
            time.sleep(0.1)
        time.sleep(0.5)  # let the node's output publishers match ours
        rss_start_idle = _rss_mb(proc.pid)
        log(f"[node-bench] {method}: node ready (pid {proc.pid}, RSS {rss_start_idle:.0f} MB); "
            f"publishing {n_frames} frames at {rate:g} Hz")

        def sample_rss() -> None:
            while not stop.is_set():
                rss.append(((time.monotonic_ns() - t0[0]) / 1e9, _rss_mb(proc.pid)))
                stop.wait(1.0)
        period = 1.0 / rate
        t0[0] = time.monotonic_ns()
        threading.Thread(target=sample_rss, daemon=True).start()
        base_ns = time.time_ns()
        start = time.monotonic()
        late = 0
        next_report = start + 30.0
        for k in range(n_frames):
            target = start + k * period
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                late += 1
            rgb, labels, domain = frames[k % len(frames)]
            stamp = base_ns + k * int(period * 1e9)  # unique, monotonic stamps
            header = Header(frame_id="camera")
            header.stamp.sec, header.stamp.nanosec = stamp // 1_000_000_000, stamp % 1_000_000_000
            h, w, step, data = codec.rgb_to_raw(rgb, encoding)
            msg = Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=False, step=step)
            buf = array.array("B")
            buf.frombytes(data)
            msg.data = buf
            with rec.lock:
                truth[stamp] = (labels, domain)
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
                log(f"[node-bench] {method}: {k + 1}/{n_frames} sent, {len(rec.matched)} outputs, "
                    f"recent p50 {_pct(lat, 50):.0f} ms, node RSS {_rss_mb(proc.pid):.0f} MB")
        wall = time.monotonic() - start
        time.sleep(drain_s)  # outputs in flight, and one more /diagnostics
        n_diag = len(rec.diag_timeline)
        wait_until = time.monotonic() + 3.0
        while len(rec.diag_timeline) == n_diag and time.monotonic() < wait_until:
            time.sleep(0.1)
        rss_end = _rss_mb(proc.pid)
        if proc.poll() is not None:
            raise RuntimeError(f"tta_node ({method}) exited early: " + " | ".join(node_log[-5:]))
        with rec.lock:
            samples = list(rec.samples)
            diag = dict(rec.diag)
            diag_timeline = list(rec.diag_timeline)
            cm = rec.cm
            per_domain = {d: {"miou": 100.0 * c.miou(), "acc": 100.0 * c.accuracy()}
                          for d, c in rec.cm_domain.items()}
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
            "latency_ms": {"p50": _pct(lat, 50), "p95": _pct(lat, 95), "mean": float(np.mean(lat)) if lat else
                           float("nan"), "max": float(max(lat)) if lat else float("nan")},
            "growth": {"window_s": w, "first_p50_ms": _pct(first, 50), "last_p50_ms": _pct(last, 50),
                       "first_p95_ms": _pct(first, 95), "last_p95_ms": _pct(last, 95),
                       "last_over_first_p50": _pct(last, 50) / _pct(first, 50) if first and last else float("nan"),
                       "rss_ready_mb": rss_start_idle, "rss_first_output_mb": rss_after_first,
                       "rss_end_mb": rss_end, "rss_max_mb": max((r for _, r in rss), default=float("nan"))},
            "miou": 100.0 * cm.miou(), "acc": 100.0 * cm.accuracy(), "miou_per_domain": per_domain,
            "node_diagnostics": {
                "frames_received": int(_f(diag.get("frames_received"))) if diag else None,
                "frames_processed": int(_f(diag.get("frames_processed"))) if diag else None,
                "frames_dropped": int(_f(diag.get("frames_dropped"))) if diag else None,
                "latency_p50_ms": _f(diag.get("latency_p50_ms")), "latency_p95_ms": _f(diag.get("latency_p95_ms")),
                "model_p50_ms": _f(diag.get("model_p50_ms")),
                "adaptation_steps": int(_f(diag.get("adaptation_steps"))) if diag else None,
                "mean_adapt_ms": _f(diag.get("mean_adapt_ms")), "device": diag.get("device"),
                "selected_blocks": diag.get("selected_blocks"), "inference_errors": diag.get("inference_errors"),
                "note": "latency/model p50 over the node's last 256 frames; latency = arrival in the "
                        "node -> outputs published; model = Pipeline.infer (to_input + forward + "
                        "post-processing)"},
            "timeline": {"t_s": times, "latency_ms": lat}, "rss_timeline": rss,
            "diag_timeline": diag_timeline,
        })
        log(f"[node-bench] {method}: {matched}/{n_frames} outputs matched, p50 "
            f"{result['latency_ms']['p50']:.0f} ms p95 {result['latency_ms']['p95']:.0f} ms, node "
            f"processed/dropped {result['node_diagnostics']['frames_processed']}/"
            f"{result['node_diagnostics']['frames_dropped']}, mIoU {result['miou']:.1f}")
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        spinner.join(timeout=2.0)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        result["node_exit_code"] = proc.returncode
        result["node_log_tail"] = node_log[-8:]
    return result


# ====================================================================== the whole benchmark
def run_node_bench(methods: Sequence[str] = ("source", "dplot"), *, duration: Optional[float] = 120.0,
                   frames: Optional[int] = None, rate: float = 10.0, size: tuple[int, int] = (128, 256),
                   out: str | Path = "runs/node_bench", schedule: str = "dynamic", stride: int = 2,
                   unique_frames: int = 1200, encoding: str = "bgra8", device: str = "cpu",
                   node_params: Optional[dict[str, Any]] = None, window_s: float = 60.0,
                   overhead: bool = True, overhead_repeats: int = 60, startup_timeout: float = 120.0,
                   drain_s: float = 2.0, domain_id: Optional[int] = None, plot: bool = True,
                   torch_threads: int = 0,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    methods = list(methods)
    if len(set(methods)) != len(methods) or not (methods or overhead):
        raise ValueError(f"methods must be distinct and non-empty (or measure the overhead only), got {methods}")
    if rate <= 0:
        raise ValueError("--rate must be positive")
    n_frames = int(frames) if frames else int(round(float(duration or 0) * rate))
    if n_frames <= 0:
        raise ValueError("--frames or --duration must be positive")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if domain_id is None:
        env_id = os.environ.get("ROS_DOMAIN_ID", "").strip()
        # a private domain (0..101 is the safe range on Linux) unless the caller chose one
        domain_id = int(env_id) if env_id.isdigit() else random.Random(os.getpid() ^ time.time_ns()).randint(1, 101)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    rendered = render_frames(schedule, min(n_frames, unique_frames) if methods else 1, size, stride, log=log)
    report: dict[str, Any] = {
        "settings": {"methods": methods, "frames": n_frames, "rate_hz": rate, "size": list(size),
                     "schedule": schedule, "frame_stride": stride, "unique_frames": len(rendered),
                     "encoding": encoding, "device": device, "node_params": node_params or {},
                     "torch_threads": torch_threads or "torch default (= cores)",
                     "ros_domain_id": domain_id, "cpus": os.cpu_count(),
                     "load_avg_at_start": list(os.getloadavg())},
        "methods": {},
    }
    if overhead:
        import rclpy
        from rclpy.context import Context

        ctx = Context()
        rclpy.init(context=ctx, domain_id=domain_id)
        try:
            # what this benchmark subscribes to (class_ids), and every output subscribed
            for key, outputs in (("overhead", ("class_ids",)),
                                 ("overhead_all_outputs", ("class_ids", "confidence", "overlay"))):
                report[key] = measure_overhead("source", size, overhead_repeats, encoding,
                                               frame=rendered[0][0], context=ctx,
                                               torch_threads=torch_threads, outputs=outputs)
        finally:
            rclpy.try_shutdown(context=ctx)
        for key in ("overhead", "overhead_all_outputs"):
            o = report[key]
            log(f"[node-bench] overhead (in process, source, outputs {'+'.join(o['outputs'])}): forward "
                f"{o['model_forward_ms']:.1f} ms; decode {o['decode_ms']:.2f} + to_input {o['to_input_ms']:.2f} "
                f"+ messages {o['messages_ms']:.2f} + publish {o['publish_ms']:.2f} ms = "
                f"{o['conversion_publishing_pct_of_model']:.1f} % of the forward; + postprocess "
                f"{o['postprocess_ms']:.2f} ms = {o['overhead_pct_of_model']:.1f} %")
    for m in methods:
        report["methods"][m] = run_method(
            m, rendered, n_frames, rate=rate, encoding=encoding, device=device, domain_id=domain_id,
            node_params=dict(node_params or {}), window_s=window_s, startup_timeout=startup_timeout,
            drain_s=drain_s, log=log, torch_threads=torch_threads)
    report["settings"]["load_avg_at_end"] = list(os.getloadavg())
    if "source" in report["methods"] and "dplot" in report["methods"]:
        s, d = report["methods"]["source"], report["methods"]["dplot"]
        report["ratio_p50_dplot_over_source"] = d["latency_ms"]["p50"] / s["latency_ms"]["p50"]
        report["ratio_p95_dplot_over_source"] = d["latency_ms"]["p95"] / s["latency_ms"]["p95"]
    report["text"] = format_report(report)
    path = out / "node_bench.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=_json_default))
    tmp.replace(path)
    files = {"json": str(path)}
    if plot and methods:
        files["png"] = str(plot_report(report, out / "node_bench.png"))
    report["files"] = files
    log(report["text"])
    return report


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return str(obj)


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'method':<8} {'out/pub':>11} {'p50 ms':>7} {'p95 ms':>7} {'node proc/drop':>15} "
             f"{'mIoU':>6} {'acc':>6} {'p50 first/last':>15} {'RSS MB start/end':>17}"]
    for m, r in report["methods"].items():
        nd, g = r["node_diagnostics"], r["growth"]
        lines.append(f"{m:<8} {r['matched_stamps']:>5}/{r['published']:<5} {r['latency_ms']['p50']:>7.0f} "
                     f"{r['latency_ms']['p95']:>7.0f} {str(nd['frames_processed']) + '/' + str(nd['frames_dropped']):>15} "
                     f"{r['miou']:>6.1f} {r['acc']:>6.1f} {g['first_p50_ms']:>7.0f}/{g['last_p50_ms']:<7.0f} "
                     f"{g['rss_first_output_mb']:>8.0f}/{g['rss_end_mb']:<8.0f}")
    if "ratio_p50_dplot_over_source" in report:
        lines.append(f"p50(dplot)/p50(source) = {report['ratio_p50_dplot_over_source']:.2f} (goal <= 2)")
    for key in ("overhead", "overhead_all_outputs"):
        o = report.get(key)
        if o:
            lines.append(f"node overhead (in process, 1 frame {o['size'][0]}x{o['size'][1]}, outputs "
                         f"{'+'.join(o.get('outputs', []))}), vs the model forward {o['model_forward_ms']:.2f} ms: "
                         f"conversion + publishing {o['conversion_publishing_ms']:.2f} ms = "
                         f"{o['conversion_publishing_pct_of_model']:.1f} % (goal < 10 %); with the post-processing "
                         f"(argmax, confidence, overlay) {o['overhead_ms']:.2f} ms = {o['overhead_pct_of_model']:.1f} %")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: Path) -> Path:
    from tta_perception.plots import _plt

    plt = _plt()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, height_ratios=(3, 1.4))
    for m, r in report["methods"].items():
        t, lat = r["timeline"]["t_s"], r["timeline"]["latency_ms"]
        line, = ax.plot(t, lat, ".", ms=2, alpha=0.35)
        if len(lat) >= 20:
            k = 20
            med = [float(np.median(lat[max(0, i - k):i + 1])) for i in range(len(lat))]
            ax.plot(t, med, "-", color=line.get_color(),
                    label=f"{m}: p50 {r['latency_ms']['p50']:.0f} ms, p95 {r['latency_ms']['p95']:.0f} ms")
        else:
            line.set_label(m)
        if r["rss_timeline"]:
            ax2.plot([x[0] for x in r["rss_timeline"]], [x[1] for x in r["rss_timeline"]],
                     color=line.get_color(), label=f"{m} node RSS")
    s = report["settings"]
    ax.set_ylabel("publish -> class_ids latency (ms)")
    ax.set_title(f"tta_node over DDS: {s['schedule']} at {s['rate_hz']:g} Hz, {s['size'][0]}x{s['size'][1]} "
                 f"{s['encoding']}, {s['frames']} frames, device {s['device']}")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_yscale("log")
    ax2.set_ylabel("RSS (MB)")
    ax2.set_xlabel("seconds since the first frame")
    ax2.legend(loc="lower right", fontsize=8)
    from ..plots import save_figure

    return save_figure(fig, path)
