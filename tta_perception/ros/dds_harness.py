"""The DDS harness every node-bench mode runs on (``ros.node_bench``: methods, cameras, memory;
``ros.storm``): ``tta_node`` processes of its own, one rclpy context with one participant spun on a
thread, publishing paced at a camera rate, the nodes' RSS sampled, waits that fail as soon as a node
process dies, and one clean-up in a fixed order (the processes first, so no callback runs on a
destroyed node).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from ..runtime.memory import rss_mb


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
        self.ns, self.label = ns, label
        self.cmd, self.env, self.log = cmd, env, []
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=lambda: [self.log.append(line.rstrip()) for line in self.proc.stdout],
                         daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def failed(self, what: str) -> RuntimeError:
        """The error of this node (``what`` went wrong), with its last log lines."""
        return RuntimeError(f"tta_node ({self.label}) {what}: " + " | ".join(self.log[-5:]))

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown (a crash)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def dds_context(domain_id: int) -> Iterator[Any]:
    """An rclpy context of its own on ``domain_id``, shut down on the way out."""
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    try:
        yield ctx
    finally:
        rclpy.try_shutdown(context=ctx)


def stamp_header(stamp_ns: int, frame_id: str = "camera") -> Any:
    """A header stamped ``stamp_ns`` (nanoseconds)."""
    from std_msgs.msg import Header

    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return header


def stamp_ns(header: Any) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


class Pacer:
    """The timed modes' camera (methods, cameras): ticks at ``rate`` from now: ``wait(k)`` sleeps until tick ``k`` is due (a tick due more than a
    period ago counts as late), ``stamp(k)`` is its unique, monotonic stamp, ``pause()`` holds the
    schedule (a restart is no publishing time)."""

    def __init__(self, rate: float) -> None:
        self.period = 1.0 / rate
        self.late = 0
        self.base_ns = time.time_ns()
        self.start = time.monotonic()

    def wait(self, k: int) -> None:
        delay = self.start + k * self.period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -self.period:
            self.late += 1

    def stamp(self, k: int) -> int:
        return self.base_ns + k * int(self.period * 1e9)

    @contextmanager
    def pause(self) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        finally:
            self.start += time.monotonic() - t

    def wall(self) -> float:
        """Seconds of publishing so far (pauses excluded)."""
        return time.monotonic() - self.start


class RssSampler:
    """The RSS of the harness's node processes every ``period`` s on a thread: the timeline
    ``(seconds since t0_ns, {node: MB})`` (``timeline``) and the peak of each since ``reset_peak``."""

    def __init__(self, nodes: Callable[[], dict[str, NodeProcess]], period: float, stop: threading.Event,
                 t0_ns: int, timeline: bool = True) -> None:
        self._nodes, self._period, self._stop, self.t0_ns = nodes, period, stop, t0_ns
        self.timeline: list[tuple[float, dict[str, float]]] = []
        self._keep = timeline
        self.peak: dict[str, float] = {}
        threading.Thread(target=self._run, daemon=True).start()

    def reset_peak(self) -> None:
        self.peak = {n: p.rss_mb() for n, p in self._nodes().items()}

    def _run(self) -> None:
        while not self._stop.is_set():
            now = {n: p.rss_mb() for n, p in self._nodes().items()}
            for n, v in now.items():
                self.peak[n] = max(self.peak.get(n, 0.0), v or 0.0)
            if self._keep:
                self.timeline.append(((time.monotonic_ns() - self.t0_ns) / 1e9, now))
            self._stop.wait(self._period)


class Harness:
    """One benchmark participant (node ``name`` on ``domain_id``) and the ``tta_node`` processes it
    drives, closed together (``with Harness(...) as h``). ``threads`` > 1: a multi-threaded
    executor (a flood of service replies beside frames)."""

    def __init__(self, domain_id: int, name: str, log: Callable[[str], None], threads: int = 1) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
        from rclpy.node import Node

        self.domain_id, self.log = domain_id, log
        self.nodes: dict[str, NodeProcess] = {}  # the running process of each node (a restart replaces it)
        self._started: list[NodeProcess] = []
        self.stop = threading.Event()
        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = Node(name, context=self.ctx)
        self.executor = (MultiThreadedExecutor(num_threads=threads, context=self.ctx) if threads > 1
                         else SingleThreadedExecutor(context=self.ctx))
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        while not self.stop.is_set() and self.ctx.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # shutdown races
                if self.stop.is_set():
                    return

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        import rclpy

        self.stop.set()
        for p in self._started:
            p.stop()
        self._spinner.join(timeout=2.0)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)

    # ------------------------------------------------------------------ node processes
    def start_node(self, key: str, ns: str, params: dict[str, Any], torch_threads: int = 0,
                   label: str = "") -> NodeProcess:
        """A ``tta_node`` process as node ``key`` (replacing the one there: a restart)."""
        proc = NodeProcess(ns, params, self.domain_id, torch_threads, self.log, label=label or key)
        self.nodes[key] = proc
        self._started.append(proc)
        return proc

    def check_alive(self, what: str = "exited") -> None:
        for p in self.nodes.values():
            if not p.alive():
                raise p.failed(what)

    def wait_for(self, predicate: Callable[[], bool], timeout: float, poll: float = 0.05,
                 what: str = "exited") -> bool:
        """Until ``predicate()`` (True) or ``timeout`` (False); a node process that dies meanwhile
        raises (``what``: how its error reads)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive(what)
            if predicate():
                return True
            time.sleep(poll)
        return False

    def sample_rss(self, period: float, t0_ns: Optional[int] = None, timeline: bool = True) -> RssSampler:
        return RssSampler(lambda: dict(self.nodes), period, self.stop,
                          time.monotonic_ns() if t0_ns is None else t0_ns, timeline)

    # ------------------------------------------------------------------ DDS
    def listen_diagnostics(self, on_status: Callable[[Any], None], depth: int = 50) -> None:
        """``on_status(DiagnosticArray)`` for every /diagnostics message (``ros.diagnostics`` reads it)."""
        from diagnostic_msgs.msg import DiagnosticArray

        self.node.create_subscription(DiagnosticArray, "/diagnostics", on_status, depth)

    def call(self, client: Any, request: Any, timeout: float, what: str) -> Any:
        """A service call answered within ``timeout`` s (or RuntimeError naming ``what``)."""
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout):
            raise RuntimeError(f"{what} did not answer in {timeout:g} s")
        return future.result()

    def drain(self, drain_s: float, counts: Callable[[], Sequence[int]], at_rest: Callable[[], Any] = lambda: None,
              timeout: float = 3.0) -> Any:
        """After the last frame: ``drain_s`` for the outputs in flight, then ``at_rest()`` (what is
        measured once they are in), then until every one of ``counts()`` (statuses received per
        node) grew, or ``timeout``: the counters read after the last frame. What ``at_rest`` returned."""
        time.sleep(drain_s)
        rested = at_rest()
        before = list(counts())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(a > b for a, b in zip(counts(), before)):
            time.sleep(0.1)
        return rested
