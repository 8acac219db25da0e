"""The DDS side of ``tta-perception node-bench --storm``: one peer floods a ``tta_node`` process with
requests while a camera keeps publishing, and measures what a driving stack would notice.

Without SROS2 any participant on the domain may call the node's services and set its parameters, by
mistake (a script in a loop, a dashboard that retries) or on purpose. Two storms, one after the other:

- services: ``n_calls`` concurrent calls (half ``~/save``, a sixth ``~/reset``, a third ``~/enable``)
  sent at once from one client per service (deep queues on our side, so DDS drops none of the
  requests): how many are answered, and when the last answer arrives;
- parameters: ``n_params`` ``set_parameters`` calls spread over ``param_seconds``, every other one
  changing ``method`` (a reload each), the others a live parameter: reply latency, missing replies,
  and how long after the last call the node runs the last requested method.

Frames are published at ``rate`` throughout; the outputs that come back per storm tell whether the
running model kept answering.
"""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Callable

import numpy as np
from sensor_msgs.msg import Image

from ..runtime import diagnostics as D
from ..runtime.health import percentile
from . import convert
from .dds_harness import Harness, stamp_header
from .diagnostics import Watch
from .qos import output_qos, service_qos

#: methods the parameter storm cycles through (cheap to build: no phase-A bundle to load)
STORM_METHODS = ("tent", "norm", "source", "eata")


def run_storm(*, node_params: dict[str, Any], domain_id: int, log: Callable[[str], None],
              n_calls: int = 1000, n_params: int = 1000, param_seconds: float = 20.0, rate: float = 10.0,
              size: tuple[int, int] = (128, 256), answer_timeout: float = 60.0, settle_timeout: float = 60.0,
              startup_timeout: float = 120.0, torch_threads: int = 0) -> dict[str, Any]:
    """Both storms against one node process (see the module docstring); a dict of the figures."""
    ns = f"/node_bench_storm_{os.getpid()}"
    state_dir = tempfile.mkdtemp(prefix="tta_storm_")  # where the storm's saves land, removed after
    report: dict[str, Any] = {"n_calls": n_calls, "n_params": n_params, "param_seconds": param_seconds,
                              "rate_hz": rate, "node_params": node_params}
    try:
        with Harness(domain_id, f"node_bench_storm_{os.getpid()}", log, threads=2) as h:
            node = h.start_node("storm", ns, {"diagnostics_period": 0.5, "state_dir": state_dir, **node_params},
                                torch_threads)
            storm = _Storm(h, ns, rate, size)
            if not storm.wait_for(storm.ready, startup_timeout):
                raise node.failed("did not start")
            threading.Thread(target=storm.publish, daemon=True).start()
            storm.wait_for(lambda: len(storm.outputs) >= 3, 60.0)
            log(f"[node-bench] storm: node ready; {n_calls} concurrent service calls")
            report["services"] = storm.services(n_calls, answer_timeout)
            report["parameters"] = storm.parameters(n_params, param_seconds, answer_timeout, settle_timeout)
            report["node_alive"] = node.alive()
            report["diagnostics"] = dict(storm.diag.values)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    return report


class _Storm:
    """The peer's side of the storms: a camera, the node's outputs and status, its service clients."""

    def __init__(self, h: Harness, ns: str, rate: float, size: tuple[int, int]) -> None:
        from rcl_interfaces.srv import SetParameters
        from std_srvs.srv import SetBool, Trigger

        self.h, self.rate, self.size = h, rate, size
        peer = h.node
        self.pub = peer.create_publisher(Image, f"{ns}/image", output_qos(2))
        self.outputs: list[float] = []
        peer.create_subscription(Image, f"{ns}/class_ids", lambda m: self.outputs.append(time.monotonic()),
                                 output_qos(50))
        self.diag = Watch(ns)
        h.listen_diagnostics(self.diag, 20)
        self.clients = {name: peer.create_client(srv, f"{ns}/tta_node/{name}", qos_profile=service_qos())
                        for name, srv in (("save", Trigger), ("reset", Trigger), ("enable", SetBool))}
        self.params_client = peer.create_client(SetParameters, f"{ns}/tta_node/set_parameters",
                                                qos_profile=service_qos())

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        return self.h.wait_for(predicate, timeout, poll=0.02)

    def ready(self) -> bool:
        return (self.diag.get(D.STATE) == D.ACTIVE and self.pub.get_subscription_count() > 0
                and all(c.service_is_ready() for c in (*self.clients.values(), self.params_client)))

    def publish(self) -> None:
        """The camera, until the harness stops."""
        h, w = self.size
        rgb = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
        for stamp in itertools.count(1):
            if self.h.stop.wait(1.0 / self.rate):
                return
            self.pub.publish(convert.rgb_image(stamp_header(stamp * int(1e9 / self.rate)), rgb, "rgb8"))

    def answered_between(self, t0: float, t1: float) -> int:
        return sum(1 for t in list(self.outputs) if t0 <= t <= t1)

    def services(self, n_calls: int, answer_timeout: float) -> dict[str, Any]:
        """Everything at once."""
        from std_srvs.srv import SetBool, Trigger

        clients, diag = self.clients, self.diag
        kinds = ["save"] * (n_calls // 2) + ["reset"] * (n_calls // 6)
        kinds += ["enable"] * (n_calls - len(kinds))
        replies: list[float] = []
        futures = []
        t0 = time.monotonic()
        for kind in kinds:
            request = SetBool.Request(data=True) if kind == "enable" else Trigger.Request()
            future = clients[kind].call_async(request)
            future.add_done_callback(lambda f: replies.append(time.monotonic()))
            futures.append((kind, future))
        sent_s = time.monotonic() - t0
        self.wait_for(lambda: len(replies) >= n_calls, answer_timeout)
        t1 = time.monotonic()
        ok = {k: sum(1 for kind, f in futures if kind == k and f.done() and f.result().success)
              for k in clients}
        diag.fresh(self.h.check_alive)
        services = {
            "sent": n_calls, "send_s": sent_s, "answered": len(replies),
            "last_answer_s": (max(replies) - t0) if replies else float("nan"),
            "successful": ok, "frames_answered": self.answered_between(t0, t1), "seconds": t1 - t0,
            "saves": diag.counter(D.SAVES), "saves_shared": diag.counter(D.SAVES_SHARED)}
        self.h.log(f"[node-bench] storm: {len(replies)}/{n_calls} service calls answered, the last after "
                   f"{services['last_answer_s']:.2f} s; {services['frames_answered']} frames answered meanwhile")
        return services

    def parameters(self, n_params: int, param_seconds: float, answer_timeout: float,
                   settle_timeout: float) -> dict[str, Any]:
        """``n_params`` calls over ``param_seconds``, every other one a reload."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        diag, log = self.diag, self.h.log
        latencies: list[float] = []
        calls = []
        method_cycle = itertools.cycle(STORM_METHODS)
        last_method = None
        t0 = time.monotonic()
        for i in range(n_params):
            due = t0 + i * param_seconds / max(1, n_params)
            time.sleep(max(0.0, due - time.monotonic()))
            if i % 2 == 0:
                last_method = next(method_cycle)
                param = Parameter("method", value=last_method)
            else:
                param = Parameter("overlay_alpha", value=round(0.1 + 0.8 * (i % 9) / 8, 3))
            sent_at = time.monotonic()
            future = self.params_client.call_async(SetParameters.Request(parameters=[param.to_parameter_msg()]))
            future.add_done_callback(lambda f, s=sent_at: latencies.append(time.monotonic() - s))
            calls.append(future)
        t_last = time.monotonic()
        self.wait_for(lambda: len(latencies) >= n_params, answer_timeout)
        settled = self.wait_for(lambda: diag.get(D.METHOD) == last_method and diag.get(D.RELOADING) == D.FALSE,
                                settle_timeout)
        t_settled = time.monotonic()
        diag.fresh(self.h.check_alive)
        accepted = sum(1 for f in calls if f.done() and all(r.successful for r in f.result().results))
        p = {
            "sent": n_params, "answered": len(latencies), "accepted": accepted,
            "reply_p50_ms": percentile(latencies, 50) * 1000, "reply_p95_ms": percentile(latencies, 95) * 1000,
            "reply_max_ms": max(latencies) * 1000 if latencies else float("nan"),
            "late_over_1s": sum(1 for v in latencies if v > 1.0),
            "last_method": last_method, "settled": settled,
            "settle_s": (t_settled - t_last) if settled else float("nan"),
            "frames_answered": self.answered_between(t0, t_last), "frames_sent": int((t_last - t0) * self.rate),
            "reloads": diag.counter(D.RELOADS), "reloads_coalesced": diag.counter(D.RELOADS_COALESCED),
            "reload_failures": diag.counter(D.RELOAD_FAILURES)}
        log(f"[node-bench] storm: {p['answered']}/{n_params} parameter calls answered (p50 {p['reply_p50_ms']:.1f} ms, "
            f"p95 {p['reply_p95_ms']:.1f} ms); settled on {last_method!r} {p['settle_s']:.2f} s after the last; "
            f"{p['reloads']} reloads built, {p['reloads_coalesced']} coalesced; {p['frames_answered']} of "
            f"~{p['frames_sent']} frames answered during the storm")
        return p
