"""The synthetic weather loop over DDS in one process: ``weather_camera`` -> ``tta_node`` (one per
method, side by side on the same frames) -> ``evaluator``; the per-phase table of the methods.

This is what ``carla_weather.launch.py mode:=synthetic`` runs, as one call (for the demo and for
machines without ``ros2 launch``)::

    from tta_perception.ros.weather_loop import available, run_weather_loop
    ok, why = available()            # False (with the reason) where rclpy cannot be imported
    result = run_weather_loop(duration=60.0, methods=("source", "dplot"))
    print(result.text)               # phase x method mIoU table; result.files: CSV/JSON/PNG

or ``python -m tta_perception.ros.weather_loop --duration 60``.

All nodes are the real ones (real rclpy, real DDS topics, the nodes' own QoS) in one context with a
multi-threaded executor; each ``tta_node`` still infers on its own worker thread and adapts on its
adapter's thread, keeping only the newest frame, so a method slower than the camera skips frames
(reported as processed/dropped). The nodes live under a private namespace (``/tta_weather_loop_<pid>``)
so a loop never mixes with other nodes on the same ROS network.

``cameras=N`` (or view names): the car's first N views (``world.views``: front, rear, narrow, wide)
publish together; each ``tta_node`` adapts one model on all of them (``cameras`` parameter) and the
evaluator scores every camera and all of them together (``result.camera_text``).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence


def available() -> tuple[bool, str]:
    """(True, "") when rclpy and the message packages import; else (False, why)."""
    try:
        import rclpy  # noqa: F401
        from diagnostic_msgs.msg import DiagnosticArray  # noqa: F401
        from sensor_msgs.msg import Image  # noqa: F401
        from std_msgs.msg import String  # noqa: F401
    except ImportError as err:  # includes a wheel present but its libraries not on the path
        return False, f"{type(err).__name__}: {err}"
    return True, ""


@dataclass
class LoopResult:
    table: dict[str, Any]
    text: str
    files: dict[str, Path]
    published: int
    processed: dict[str, int]
    dropped: dict[str, int]
    wall_s: float
    late_ticks: int = 0
    latency_p50_ms: dict[str, float] = field(default_factory=dict)
    cameras: list[str] = field(default_factory=list)
    camera_tables: dict[str, Any] = field(default_factory=dict)  # {method: {camera | overall: {phase: ...}}}
    camera_text: str = ""
    delivery: list[Any] = field(default_factory=list)  # bench.delivery.Delivery per method
    delivery_text: str = ""


class LoopError(ValueError):
    """A node refused its configuration (e.g. missing weights or DPLOT bundle); the message says which
    and why. A ValueError, so the command line prints it as one line."""


def run_weather_loop(schedule: str = "dynamic", duration: float = 60.0,
                     methods: Sequence[str] = ("source", "dplot"), *, rate: float = 10.0,
                     frame_stride: int = 2, start_frame: int = 0, size: tuple[int, int] = (128, 256),
                     encoding: str = "bgra8", device: str = "auto", model: str = "driveseg",
                     architecture: str = "", node_params: Optional[dict[str, Any]] = None,
                     out: str | Path = "runs/weather_loop", domain_id: Optional[int] = None,
                     num_classes: int = 12, drain_s: float = 3.0, threads: int = 4,
                     log: Callable[[str], None] = print, report_every: float = 10.0,
                     cameras: "int | Sequence[str]" = 1) -> LoopResult:
    """Run the loop for ``duration`` seconds of camera time (``duration * rate`` frames).

    Defaults: the ``dynamic`` schedule fast-forwarded 2x (``frame_stride=2`` at 10 Hz covers its
    120-s cycle — clear, rain, fog, dusk, night, night rain — in 60 s), 128x256 bgra8 frames as the
    CARLA bridge sends, the embedded ``driveseg`` model. ``node_params`` go to every ``tta_node``
    (e.g. ``{"window": 16}``); the evaluator writes ``out/loop_{frames,domains}.csv``,
    ``loop_summary.json`` and ``loop_plot.png``. ``cameras``: a count (``views_for``) or view names;
    1 is the single ``camera/image_raw`` camera.
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from .evaluator import Evaluator
    from ..bench.delivery import Delivery, format_delivery
    from ..metrics import format_table
    from .tta_node import TTANode
    from .weather_camera import WeatherCamera

    from tta_perception.world.views import views_for

    views = views_for(cameras) if isinstance(cameras, int) else list(cameras)
    views = [] if views == ["front"] and isinstance(cameras, int) else views  # one camera: as ever
    methods = list(methods)
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be distinct and non-empty, got {methods}")
    if duration <= 0 or rate <= 0:
        raise ValueError("duration and rate must be positive")
    frames = max(1, int(round(duration * rate)))
    ns = f"/tta_weather_loop_{os.getpid()}"
    out = Path(out)

    def params(**kw: Any) -> list:
        return [Parameter(k, value=v) for k, v in kw.items()]

    ctx = Context()
    init_kwargs = {"context": ctx}
    if domain_id is not None:
        init_kwargs["domain_id"] = int(domain_id)
    rclpy.init(**init_kwargs)
    executor = MultiThreadedExecutor(num_threads=int(threads), context=ctx)
    nodes: list[Any] = []
    tta_nodes: dict[str, Any] = {}
    camera = None
    spin = None
    stop = threading.Event()
    t_start = time.monotonic()
    try:
        for m in methods:
            # the caller's own process and code: a 'module:function' architecture may be imported
            overrides = {"model": model, "architecture": architecture, "method": m, "device": device,
                         "allow_code_architecture": ":" in architecture,
                         "diagnostics_period": 1.0}
            if views:
                overrides["cameras"] = views
            overrides.update(node_params or {})
            remaps = ([a for v in views for a in ("-r", f"{v}/image:={ns}/{v}/image_raw")] if views
                      else ["-r", f"image:={ns}/camera/image_raw"])
            node = TTANode(namespace=f"{ns}/{m}", context=ctx, parameter_overrides=params(**overrides),
                           cli_args=["--ros-args", *remaps], use_global_arguments=False)
            nodes.append(node)
            tta_nodes[m] = node
            log(f"[weather_loop] loading {m!r} ({model}) ...")
            node.start()
            if node.session.state != "active":
                raise LoopError(f"tta_node for method {m!r} did not start: "
                                f"{node.session.config_error or node.session.state}")
        evaluator = Evaluator(namespace=ns, context=ctx, use_global_arguments=False, parameter_overrides=params(
            prediction_topics=[f"{ns}/{m}/class_ids" for m in methods], labels=methods,
            num_classes=int(num_classes), output_dir=str(out), prefix="loop_", **({"cameras": views} if views else {}),
            title=f"{schedule}, {frames} frames at {rate:g} Hz (x{frame_stride})"))
        nodes.append(evaluator)
        for node in nodes:
            executor.add_node(node)
        spin = threading.Thread(target=_spin, args=(executor, ctx, stop), name="weather_loop_spin", daemon=True)
        spin.start()
        camera = WeatherCamera(namespace=ns, context=ctx, use_global_arguments=False, parameter_overrides=params(
            schedule=schedule, rate=float(rate), frame_stride=int(frame_stride), start_frame=int(start_frame),
            height=int(size[0]), width=int(size[1]), encoding=encoding, max_frames=frames,
            wait_for_subscribers=len(methods), wait_for_truth_subscribers=1,
            **({"cameras": views} if views else {})))
        nodes.append(camera)
        executor.add_node(camera)
        log(f"[weather_loop] {schedule!r}: {frames} frames at {rate:g} Hz ({duration:g} s), methods "
            f"{', '.join(methods)}, device {device}" + (f", cameras {', '.join(views)}" if views else ""))
        t_start = time.monotonic()
        next_report = t_start + report_every
        deadline = t_start + duration * 3 + 60.0  # generous: a stalled loop still ends
        while not camera.done.is_set() and time.monotonic() < deadline:
            time.sleep(0.2)
            if report_every > 0 and time.monotonic() >= next_report:
                next_report += report_every
                d = {m: n.diagnostics() for m, n in tta_nodes.items()}
                log(f"[weather_loop] {time.monotonic() - t_start:5.0f} s  frame {camera.published}/{frames} "
                    f"phase {getattr(camera, 'last_domain', '-'):<10} "
                    + "  ".join(f"{m}: {d[m]['frames_processed']} done" for m in methods))
        time.sleep(drain_s)  # the last frames through the nodes and into the evaluator
        wall = time.monotonic() - t_start
        diags = {m: n.diagnostics() for m, n in tta_nodes.items()}
        files = evaluator.write()
        table = evaluator.table()
        camera_tables = evaluator.camera_tables()
        delivery = [Delivery(m, int(camera.published) * max(1, len(views)), int(d["frames_received"]),
                             int(d["frames_processed"]), int(d["frames_dropped"]), int(d["lost_in_transport"]),
                             ",".join(sorted({s.reliability for s in tta_nodes[m]._image_subs})))
                    for m, d in diags.items()]
        return LoopResult(table=table, text=format_table(table), cameras=views, camera_tables=camera_tables,
                          delivery=delivery, delivery_text=format_delivery(delivery),
                          camera_text=evaluator.summary_text() if views else "", files=files, published=camera.published,
                          processed={m: int(d["frames_processed"]) for m, d in diags.items()},
                          dropped={m: int(d["frames_dropped"]) for m, d in diags.items()}, wall_s=wall,
                          late_ticks=camera.late_ticks,
                          latency_p50_ms={m: float(d["latency_p50_ms"]) for m, d in diags.items()})
    finally:
        # stop spinning first, so no callback runs on an entity being destroyed
        stop.set()
        if spin is not None:
            spin.join(timeout=10.0)
        if camera is not None:
            camera.stop()
        for node in nodes:
            executor.remove_node(node)
        for node in tta_nodes.values():
            node._stop_processing()
            node._free()
        for node in nodes:
            try:
                node.destroy_node()
            except Exception:  # already gone with the context
                pass
        executor.shutdown(timeout_sec=5.0)
        rclpy.try_shutdown(context=ctx)


def _spin(executor: Any, ctx: Any, stop: threading.Event) -> None:
    from rclpy.executors import ExternalShutdownException

    while ctx.ok() and not stop.is_set():
        try:
            executor.spin_once(timeout_sec=0.1)
        except ExternalShutdownException:
            return
        except Exception as err:  # an entity destroyed during shutdown: stop quietly
            if not ctx.ok():
                return
            print(f"[weather_loop] executor: {type(err).__name__}: {err}", file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tta_perception.ros.weather_loop",
                                description="weather_camera -> tta_node per method -> evaluator, over DDS")
    p.add_argument("--schedule", default="dynamic")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of camera time")
    p.add_argument("--methods", default="source,dplot", help="comma-separated")
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--frame-stride", type=int, default=2)
    p.add_argument("--start-frame", type=int, default=0)
    p.add_argument("--encoding", default="bgra8")
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default="driveseg")
    p.add_argument("--architecture", default="")
    p.add_argument("--out", type=Path, default=Path("runs/weather_loop"))
    p.add_argument("--cameras", type=int, default=1, help="views of the car (1..4: front, rear, narrow, wide)")
    args = p.parse_args(argv)
    ok, why = available()
    if not ok:
        print(f"rclpy is not available ({why}); install the ROS 2 wheels (pip install -e '.[ros]')",
              file=sys.stderr)
        return 2
    try:
        res = run_weather_loop(args.schedule, args.duration, [m for m in args.methods.split(",") if m],
                               rate=args.rate, frame_stride=args.frame_stride, start_frame=args.start_frame,
                               encoding=args.encoding, device=args.device, model=args.model,
                               architecture=args.architecture, out=args.out, cameras=args.cameras)
    except (ValueError, FileNotFoundError) as err:
        print(f"weather loop: error: {err}", file=sys.stderr)
        return 2
    print(f"\n{res.published} frames published in {res.wall_s:.0f} s; processed "
          + ", ".join(f"{m} {n} (dropped {res.dropped[m]}, p50 {res.latency_p50_ms[m]:.0f} ms)"
                      for m, n in res.processed.items()))
    print("\n" + res.delivery_text)
    print("\nmIoU % per weather phase (frames: answered and matched to the ground truth by stamp):")
    print(res.text)
    if res.camera_text:
        print("\n" + res.camera_text)
    print("\nwrote " + ", ".join(str(p) for p in res.files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
