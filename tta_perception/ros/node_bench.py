"""The DDS side of ``tta-perception node-bench`` (the protocol and the report are ``bench.node``, the
statistics ``bench.node_stats``, the types between them ``bench.node_record``): ``tta_node`` started
in its own process under a private namespace and ``ROS_DOMAIN_ID`` (localhost discovery, through
``ros.dds_harness``); this process publishes the frames at the camera rate, records the publish time
of each stamp, subscribes to ``class_ids`` and ``/diagnostics`` and samples the node's RSS.

``measure_overheads`` times, in this process on one frame, the node's own per-frame code
(``ros.convert`` decoding, ``Pipeline.to_input``, the post-processing, message building and
``publish``) against the model forward (``adapter.predict``), because the node's diagnostics only
expose the whole ``Pipeline.infer`` time (``model_p50_ms``).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from sensor_msgs.msg import Image

from ..bench.node import cpu_seconds
from ..bench.node_record import (CameraRecord, CameraSpec, Frame, MemorySweep, MethodRecord, MethodSpec,
                                 NodeUse, OutputBook, Overhead, Restart, StepRecord, StepRun, SweepStep,
                                 safe_tag)
from ..bench.node_stats import TIMELINE_KEYS
from ..runtime import diagnostics as D
from ..runtime.health import percentile
from . import convert
from .dds_harness import Harness, Pacer, dds_context, stamp_header, stamp_ns
from .diagnostics import Watch, node_values

Log = Callable[[str], None]


def measure_overhead(method: str = "source", size: tuple[int, int] = (128, 256), repeats: int = 60,
                     encoding: str = "bgra8", frame: Optional[np.ndarray] = None,
                     context: Any = None, torch_threads: int = 0,
                     outputs: Sequence[str] = ("class_ids", "confidence", "overlay")) -> Overhead:
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
    return Overhead(method, list(size), encoding, repeats, list(outputs), threads_used, med["decode"], med["to_input"],
                    med["forward"], med["post"], med["messages"],
                    med["publish"] if pubs is not None else float("nan"))


def measure_overheads(size: tuple[int, int], repeats: int, encoding: str, frame: np.ndarray, domain_id: int,
                      torch_threads: int = 0) -> dict[str, Overhead]:
    """``overhead`` (the outputs node-bench subscribes to: class_ids) and ``overhead_all_outputs``
    (every segmentation output subscribed), publishing on a private domain."""
    with dds_context(domain_id) as ctx:
        return {key: measure_overhead("source", size, repeats, encoding, frame=frame, context=ctx,
                                      torch_threads=torch_threads, outputs=outputs)
                for key, outputs in (("overhead", ("class_ids",)),
                                     ("overhead_all_outputs", ("class_ids", "confidence", "overlay")))}


# ====================================================================== wiring shared by the modes
def camera_qos(reliability: str = "reliable", depth: int = 5) -> Any:
    """The benchmark's camera publisher: keep last ``depth``."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=(ReliabilityPolicy.RELIABLE if reliability == "reliable"
                                   else ReliabilityPolicy.BEST_EFFORT))


def listen_outputs(h: Harness, topic: str, book: OutputBook) -> None:
    """``topic/class_ids`` into ``book``, stamped on arrival (decoded only when scored)."""
    from .qos import output_qos

    def on_output(msg: Any) -> None:
        t_recv = time.monotonic_ns()
        book.output(stamp_ns(msg.header), t_recv, lambda: convert.labels_of(msg))

    h.node.create_subscription(Image, f"{topic}/class_ids", on_output, output_qos(depth=50))


def _publishers_seen(diag: dict[str, str]) -> bool:
    """The node counts our publisher among its inputs (or does not say)."""
    return D.INPUT_PUBLISHERS not in diag or D.number(diag, D.INPUT_PUBLISHERS) >= 1


# ====================================================================== one method over DDS
def run_method(spec: MethodSpec, frames: Sequence[Frame], log: Log) -> MethodRecord:
    """One node process fed ``spec.n_frames`` frames at ``spec.rate`` (see ``MethodSpec``, restarts
    included); what it observed (the statistics are ``bench.node_stats.method_result``)."""
    from rclpy.event_handler import PublisherEventCallbacks
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from .qos import latched_qos

    label = spec.label
    ns = f"/node_bench_{os.getpid()}_{safe_tag(label)}"
    params = spec.params()
    restart_at = spec.restart_frames()
    if restart_at:
        if not spec.save_path:
            raise ValueError("restarts need a save_path")
        params["save_path"] = str(spec.save_path)
        params["state_dir"] = str(Path(spec.save_path).parent)  # ~/save writes only there
    book = OutputBook()
    with Harness(spec.domain_id, f"node_bench_{os.getpid()}", log) as h:
        first = h.start_node(label, ns, params, spec.torch_threads)
        rec = MethodRecord(ns, first.cmd, first.env, book)
        # every match counted: after a SIGKILL the dead node's subscription stays matched until its
        # lease ends, so only a new match says the restarted node listens
        matches = [0]
        pub = h.node.create_publisher(Image, f"{ns}/image", camera_qos(spec.publisher_qos), event_callbacks=(
            PublisherEventCallbacks(matched=lambda info: matches.__setitem__(0, int(info.total_count)))))
        listen_outputs(h, ns, book)
        h.listen_diagnostics(lambda msg: _on_status(book, msg, ns))
        h.node.create_subscription(String, f"{ns}/domain", lambda msg: book.domain_change(msg.data),
                                   latched_qos(depth=5))
        save_client = h.node.create_client(Trigger, f"{ns}/tta_node/save")

        def wait_active(since: int, matched: int = 0) -> None:
            """Until a /diagnostics message newer than ``since`` says the node is active and our
            publisher has matched more subscriptions than ``matched`` (the restarted node's, not the
            dead one's)."""
            def ready() -> bool:
                with book.lock:
                    fresh = (len(book.diag_timeline) > since and book.diag.get(D.STATE) == D.ACTIVE
                             and _publishers_seen(book.diag))  # it has matched us too
                return fresh and pub.get_subscription_count() >= 1 and matches[0] > matched

            if not h.wait_for(ready, spec.startup_timeout, poll=0.1, what="did not start"):
                raise h.nodes[label].failed("did not start")

        def restart(k: int) -> Restart:
            return _save_kill_restart(h, spec, ns, params, book, save_client, matches, wait_active, k, log,
                                      len(rec.restarts) + 1, rec.ended)

        wait_active(0)
        time.sleep(0.5)  # let the node's output publishers match ours
        rec.rss_ready_mb = h.nodes[label].rss_mb()
        log(f"[node-bench] {label}: node ready (pid {h.nodes[label].pid}, RSS {rec.rss_ready_mb:.0f} MB); "
            f"publishing {spec.n_frames} frames at {spec.rate:g} Hz")
        book.t0_ns = time.monotonic_ns()
        rss = h.sample_rss(1.0, book.t0_ns)
        pacer = Pacer(spec.rate)
        next_report = pacer.start + 30.0
        for k in range(spec.n_frames):
            if restart_at and k == restart_at[0]:
                restart_at.pop(0)
                with pacer.pause():  # restarting is not publishing time
                    rec.restarts.append(restart(k))
            pacer.wait(k)
            rgb, labels, domain = frames[k % len(frames)][:3]
            stamp = pacer.stamp(k)  # unique, monotonic stamps
            msg = convert.rgb_image(stamp_header(stamp), rgb, spec.encoding)
            book.sending(stamp, labels, domain, k, spec.cycle_key(k, domain))
            pub.publish(msg)
            book.forget_old()
            if time.monotonic() >= next_report:
                next_report += 30.0
                with book.lock:
                    lat = [s[1] for s in book.samples[-300:]]
                log(f"[node-bench] {label}: {k + 1}/{spec.n_frames} sent, {len(book.matched)} outputs, "
                    f"recent p50 {percentile(lat, 50, True):.0f} ms, node RSS {h.nodes[label].rss_mb():.0f} MB")
        rec.publish_wall_s, rec.late_publish_ticks = pacer.wall(), pacer.late
        h.drain(spec.drain_s, lambda: [book.statuses()])  # outputs in flight, and one more /diagnostics
        node = h.nodes[label]
        rec.rss_end_mb = node.rss_mb()
        if not node.alive():
            raise node.failed("exited early")
        rec.rss_timeline = [(t, v.get(label, float("nan"))) for t, v in list(rss.timeline)]
    rec.node_exit_code, rec.node_log_tail = node.proc.returncode, node.log[-8:]
    return rec


def _on_status(book: OutputBook, msg: Any, ns: str) -> None:
    values = node_values(msg, ns)
    if values is not None:
        book.diagnostics(values, TIMELINE_KEYS)


def _save_kill_restart(h: Harness, spec: MethodSpec, ns: str, params: dict[str, Any], book: OutputBook,
                       save_client: Any, matches: list[int], wait_active: Callable[[int, int], None], k: int,
                       log: Log, n: int, ended: list[dict[str, str]]) -> Restart:
    """Before frame ``k``: ``~/save``, SIGKILL (no clean shutdown), a new process with
    ``resume_from`` (restart ``n``); the killed process's last status goes to ``ended``."""
    from std_srvs.srv import Trigger

    label = spec.label
    time.sleep(spec.drain_s)  # outputs in flight
    seen = book.statuses()
    h.wait_for(lambda: book.statuses() >= seen + 2, 10.0)  # counters published after the last frame
    with book.lock:
        before = dict(book.diag)
    t_save = time.monotonic()
    if not save_client.wait_for_service(timeout_sec=10.0):
        raise RuntimeError(f"tta_node ({label}): no ~/save service")
    answer = h.call(save_client, Trigger.Request(), 60.0, f"tta_node ({label}): ~/save")
    save_s = time.monotonic() - t_save
    if not answer.success:
        raise RuntimeError(f"tta_node ({label}): ~/save failed: {answer.message}")
    old, matched = h.nodes[label], matches[0]
    old.kill()
    ended.append(before)
    since = book.statuses()
    t_start = time.monotonic()
    h.start_node(label, ns, {**params, "resume_from": str(spec.save_path)}, spec.torch_threads,
                 label=f"{label} (restart {n}, resume_from)")
    wait_active(since, matched)
    time.sleep(0.5)
    with book.lock:
        after = dict(book.diag)
    done = Restart(before_frame=k, save_s=save_s, save_message=answer.message, killed_exit_code=old.proc.returncode,
                   restart_s=time.monotonic() - t_start, pid=h.nodes[label].pid,
                   domains_known_before=before.get(D.DOMAINS_KNOWN), domains_known_after=after.get(D.DOMAINS_KNOWN),
                   adaptation_steps_before=before.get(D.ADAPTATION_STEPS))
    log(f"[node-bench] {label}: before frame {k}: saved in {save_s:.1f} s ({answer.message}), killed "
        f"(exit {old.proc.returncode}), restarted with resume_from in {done.restart_s:.1f} s"
        + (f"; domains known {done.domains_known_before} -> {done.domains_known_after}"
           if done.domains_known_before is not None else ""))
    return done


# ====================================================================== the memory sweep
def run_memory_sweep(steps: Sequence[SweepStep], *, node_params: dict[str, Any], domain_id: int,
                     log: Log, torch_threads: int = 0, rate: float = 4.0,
                     frames_per_step: int = 10, step_timeout: float = 240.0,
                     startup_timeout: float = 120.0) -> MemorySweep:
    """One node process taken through ``steps`` over DDS (the protocol is ``bench.memory``): the
    candidates of a step are offered in turn with ``set_parameters_atomically`` until the node
    accepts one (each refusal is recorded with its reason); the accepted configuration then runs
    ``frames_per_step`` frames, and on until it has adapted at least once. The node's RSS is sampled
    every 50 ms: the peak and the end value of each step."""
    from rcl_interfaces.srv import SetParametersAtomically

    ns = f"/node_bench_mem_{os.getpid()}"
    diag = Watch(ns)
    rows: list[StepRecord] = []
    with Harness(domain_id, f"node_bench_mem_{os.getpid()}", log) as h:
        node = h.start_node("memory", ns, {"diagnostics_period": 0.5, **node_params}, torch_threads)
        pub = h.node.create_publisher(Image, f"{ns}/image", camera_qos("reliable", 2))
        h.listen_diagnostics(diag, 20)
        client = h.node.create_client(SetParametersAtomically, f"{ns}/tta_node/set_parameters_atomically")
        sampler = h.sample_rss(0.05, timeline=False)

        def offer(params: dict[str, Any]) -> tuple[bool, str]:
            from rclpy.parameter import Parameter

            request = SetParametersAtomically.Request(
                parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in params.items()])
            result = h.call(client, request, 60.0, "set_parameters_atomically").result
            return bool(result.successful), str(result.reason)

        if not h.wait_for(lambda: pub.get_subscription_count() > 0 and client.service_is_ready()
                          and diag.get(D.STATE) == D.ACTIVE, startup_timeout):
            raise node.failed("did not start")
        baseline = node.rss_mb()
        log(f"[node-bench] memory: node ready, RSS {baseline:.0f} MB")
        stamps = iter(range(1, 1 << 62))
        for step in steps:
            row = StepRecord(step.name)
            rows.append(row)
            for params in step.candidates:
                ok, reason = offer(params) if params else (True, "")
                if ok:
                    row.params = params
                    break
                row.refused.append({"params": params, "reason": reason})
            if row.params is None:
                row.rss_end_mb = node.rss_mb()
                log(f"[node-bench] memory: {step.name}: every candidate refused")
                continue
            row.ran = _memory_step(h, step, diag, pub, sampler, node, stamps, rate, frames_per_step, step_timeout)
            log(f"[node-bench] memory: {step.name}: {row.params} -> peak RSS {row.ran.rss_peak_mb:.0f} MB "
                f"({row.ran.adaptation_steps} adaptation steps)")
    return MemorySweep(baseline if rows else float("nan"), rows, node.proc.returncode, node.log[-8:])


def _memory_step(h: Harness, step: SweepStep, diag: Watch, pub: Any, sampler: Any, node: Any, stamps: Any,
                 rate: float, frames_per_step: int, step_timeout: float) -> StepRun:
    """Frames to the configuration just accepted until it has predicted (and adapted)."""
    seen = diag.count
    h.wait_for(lambda: diag.count >= seen + 2 and diag.get(D.RELOADING) == D.FALSE, step_timeout)
    size = tuple(diag.get(D.INPUT_SIZE, "128x256").split("x"))
    h_, w = (int(size[0]), int(size[1])) if step.frame_size == "input" else step.frame_size
    base = (np.random.default_rng(0).random((h_ // 8 + 1, w // 8 + 1, 3)) * 255).astype(np.uint8)
    rgb = np.ascontiguousarray(base.repeat(8, 0).repeat(8, 1)[:h_, :w])
    count = diag.counter
    steps_before, processed_before = count(D.ADAPTATION_STEPS), count(D.FRAMES_PROCESSED)
    sampler.reset_peak()
    t0 = time.monotonic()
    adapts = diag.get(D.METHOD) not in ("source",)

    def done() -> bool:
        return count(D.FRAMES_PROCESSED) > processed_before and (
            not adapts or count(D.ADAPTATION_STEPS) > steps_before)

    sent = 0
    # at least frames_per_step frames, and on until it has predicted and adapted; a whole period after
    # each frame (not a schedule): a slow publish of a huge frame is not made up for with the next
    while (sent < frames_per_step or not done()) and time.monotonic() - t0 < step_timeout:
        h.check_alive()
        pub.publish(convert.rgb_image(stamp_header(next(stamps) * 1_000_000_000), rgb, "rgb8"))
        sent += 1
        time.sleep(1.0 / rate)
    return StepRun(frames_sent=sent, frame_size=[h_, w], input_size=diag.get(D.INPUT_SIZE),
                   method=diag.get(D.METHOD), window=step.window,
                   adaptation_steps=count(D.ADAPTATION_STEPS) - steps_before,
                   frames_processed=count(D.FRAMES_PROCESSED) - processed_before,
                   rss_peak_mb=sampler.peak.get("memory", float("nan")), rss_end_mb=node.rss_mb(),
                   seconds=time.monotonic() - t0, reload_failures=count(D.RELOAD_FAILURES))


# ====================================================================== several cameras
def run_cameras(spec: CameraSpec, frames: dict[str, Sequence[Frame]], log: Log) -> CameraRecord:
    """Node processes fed the frames of several cameras at ``spec.rate``, the same stamp for every
    camera of a tick (see ``CameraSpec``). Per camera: latency, outputs, online mIoU; per node: CPU
    seconds while publishing (``/proc``), RSS once a second, the node's counters."""
    import threading

    base = f"/node_bench_{os.getpid()}_{safe_tag(spec.label)}"
    ns_of = {name: f"{base}_{safe_tag(name)}" for name in spec.nodes}
    topic = {c: (f"{ns_of[name]}/{c}" if spec.nodes[name] is not None else ns_of[name])
             for name in spec.nodes for c in spec.cameras_of(name)}  # camera -> its topic prefix
    cams = [c for c in frames if c in topic]
    rec = CameraRecord(cams, {c: OutputBook() for c in cams})
    status: dict[str, dict[str, str]] = {n: {} for n in spec.nodes}  # each node's last node status
    statuses = {n: 0 for n in spec.nodes}
    lock = threading.Lock()

    def on_status(msg: Any) -> None:
        for name, ns in ns_of.items():
            values = node_values(msg, ns)
            if values is not None:
                with lock:
                    status[name], statuses[name] = values, statuses[name] + 1

    with Harness(spec.domain_id, f"node_bench_{os.getpid()}", log) as h:
        for name in spec.nodes:
            params = spec.params()
            if spec.nodes[name] is not None:
                params["cameras"] = spec.cameras_of(name)
            h.start_node(name, ns_of[name], params, spec.torch_threads, label=f"{spec.label} {name}")
        pubs = {c: h.node.create_publisher(Image, f"{topic[c]}/image", camera_qos()) for c in cams}
        for c in cams:
            listen_outputs(h, topic[c], rec.books[c])
        h.listen_diagnostics(on_status)

        def ready() -> bool:
            with lock:
                active = all(status[n].get(D.STATE) == D.ACTIVE for n in spec.nodes)
            return active and all(p.get_subscription_count() >= 1 for p in pubs.values())

        if not h.wait_for(ready, spec.startup_timeout, poll=0.1, what="did not start"):
            raise next(iter(h.nodes.values())).failed("did not start")
        time.sleep(0.5)
        rss_ready = {n: p.rss_mb() for n, p in h.nodes.items()}
        log(f"[node-bench] {spec.label}: {len(h.nodes)} node(s) ready (RSS {sum(rss_ready.values()):.0f} MB); "
            f"publishing {spec.n_frames} frames at {spec.rate:g} Hz to each of {len(cams)} cameras")
        cpu0 = {n: cpu_seconds(p.pid) for n, p in h.nodes.items()}
        t0 = time.monotonic_ns()
        for book in rec.books.values():
            book.t0_ns = t0
        rss = h.sample_rss(1.0, t0)
        pacer = Pacer(spec.rate)
        for k in range(spec.n_frames):
            pacer.wait(k)
            stamp = pacer.stamp(k)
            for c in cams:
                rgb, labels, domain = frames[c][k % len(frames[c])][:3]
                msg = convert.rgb_image(stamp_header(stamp, c), rgb, spec.encoding)
                rec.books[c].sending(stamp, labels, domain, k)
                pubs[c].publish(msg)
                rec.books[c].forget_old()
        rec.publish_wall_s, rec.late_publish_ticks = pacer.wall(), pacer.late
        cpu1 = h.drain(spec.drain_s, lambda: [statuses[n] for n in spec.nodes],
                       at_rest=lambda: {n: cpu_seconds(p.pid) for n, p in h.nodes.items()})
        h.check_alive("exited early")
        with lock:
            rec.nodes = {n: NodeUse(p.pid, cpu1[n] - cpu0[n], rss_ready[n], dict(status[n]))
                         for n, p in h.nodes.items()}
        rec.rss_timeline = list(rss.timeline)
    rec.node_log_tail = {n: p.log[-5:] for n, p in h.nodes.items()}
    return rec
