"""End-to-end benchmark of ``tta_node`` over DDS: publish -> node (own process) -> output.

For each method (``source``, ``dplot``, ...) in turn, on the same pre-rendered frames:

- the ``dynamic`` sequence of the embedded world is rendered first (``frame_stride`` 2, as the weather
  loop does; at most ``unique_frames`` distinct frames, looped for longer runs), so publishing is
  never limited by rendering;
- ``tta_node`` is started in a separate process under a private namespace and ``ROS_DOMAIN_ID``;
- the benchmark publishes ``sensor_msgs/Image`` (bgra8 by default, as CARLA sends) at ``rate`` Hz and
  records, for every output matched by stamp, the publish->output latency and the online confusion
  matrix against the ground truth of that stamp; the node's own counters; the node's RSS once a
  second;
- ``measure_overheads`` times, in this process on one frame, the node's conversion and publishing
  code against the model forward.

This module is the protocol and the report (table, Markdown, JSON, CSV, PNG: ``bench.output``); the
DDS side (publisher, subscriber, node process) is ``ros.node_bench``, which ``tta-perception
node-bench`` passes in as ``client``, so nothing here imports ROS.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..plots import _plt, save_figure
from .output import markdown_table, write_report


def render_frames(schedule: str, count: int, size: tuple[int, int], stride: int = 2,
                  workers: int = 2, log: Callable[[str], None] = print) -> list[Any]:
    """``count`` frames ``0, stride, 2*stride, ...`` of ``schedule`` (rgb, labels, domain)."""
    from ..world.sequences import iter_sequence

    t0 = time.monotonic()
    frames = [(f.rgb, f.labels, f.domain) for f in iter_sequence(
        schedule, size=size, start=0, stop=count * stride, stride=stride, workers=workers)]
    log(f"[node-bench] rendered {len(frames)} frames of {schedule!r} ({size[0]}x{size[1]}, stride "
        f"{stride}) in {time.monotonic() - t0:.1f} s")
    return frames


def run_node_bench(methods: Sequence[str] = ("source", "dplot"), *, duration: Optional[float] = 120.0,
                   frames: Optional[int] = None, rate: float = 10.0, size: tuple[int, int] = (128, 256),
                   out: str | Path = "runs/node_bench", schedule: str = "dynamic", stride: int = 2,
                   unique_frames: int = 1200, encoding: str = "bgra8", device: str = "cpu",
                   node_params: Optional[dict[str, Any]] = None, window_s: float = 60.0,
                   overhead: bool = True, overhead_repeats: int = 60, startup_timeout: float = 120.0,
                   drain_s: float = 2.0, domain_id: Optional[int] = None, plot: bool = True,
                   torch_threads: int = 0, client: Any = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark; ``client`` is the DDS side (``ros.node_bench``: ``measure_overheads`` and
    ``run_method``), passed in by the command so this module needs no ROS."""
    if client is None:
        raise ValueError("run_node_bench needs the DDS client (tta_perception.ros.node_bench)")
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
        report.update(client.measure_overheads(size, overhead_repeats, encoding, rendered[0][0], domain_id,
                                               torch_threads))
        for key in ("overhead", "overhead_all_outputs"):
            o = report[key]
            log(f"[node-bench] overhead (in process, source, outputs {'+'.join(o['outputs'])}): forward "
                f"{o['model_forward_ms']:.1f} ms; decode {o['decode_ms']:.2f} + to_input {o['to_input_ms']:.2f} "
                f"+ messages {o['messages_ms']:.2f} + publish {o['publish_ms']:.2f} ms = "
                f"{o['conversion_publishing_pct_of_model']:.1f} % of the forward; + postprocess "
                f"{o['postprocess_ms']:.2f} ms = {o['overhead_pct_of_model']:.1f} %")
    for m in methods:
        report["methods"][m] = client.run_method(
            m, rendered, n_frames, rate=rate, encoding=encoding, device=device, domain_id=domain_id,
            node_params=dict(node_params or {}), window_s=window_s, startup_timeout=startup_timeout,
            drain_s=drain_s, log=log, torch_threads=torch_threads)
    report["settings"]["load_avg_at_end"] = list(os.getloadavg())
    if "source" in report["methods"] and "dplot" in report["methods"]:
        s, d = report["methods"]["source"], report["methods"]["dplot"]
        report["ratio_p50_dplot_over_source"] = d["latency_ms"]["p50"] / s["latency_ms"]["p50"]
        report["ratio_p95_dplot_over_source"] = d["latency_ms"]["p95"] / s["latency_ms"]["p95"]
    report["text"] = format_report(report)
    files = write_report(out, "node_bench", text=report["text"], payload=report, rows=table_rows(report),
                         markdown=markdown_report(report), digits=None)
    if plot and methods:
        files["png"] = str(plot_report(report, out / "node_bench.png"))
    report["files"] = files
    log(report["text"])
    return report


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
    return save_figure(fig, path)


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method (the CSV and the Markdown table)."""
    rows = []
    for m, r in report["methods"].items():
        nd, g = r["node_diagnostics"], r["growth"]
        rows.append({"method": m, "published": r["published"], "matched": r["matched_stamps"],
                     "processed": nd["frames_processed"], "dropped": nd["frames_dropped"],
                     "p50_ms": r["latency_ms"]["p50"], "p95_ms": r["latency_ms"]["p95"],
                     "adaptation_steps": nd["adaptation_steps"], "miou": r["miou"], "acc": r["acc"],
                     "first_p50_ms": g["first_p50_ms"], "last_p50_ms": g["last_p50_ms"],
                     "rss_first_output_mb": g["rss_first_output_mb"], "rss_end_mb": g["rss_end_mb"],
                     "rss_max_mb": g["rss_max_mb"]})
    return rows


def markdown_report(report: dict[str, Any]) -> str:
    rows = table_rows(report)
    if not rows:
        return ""
    cols = ["method", "matched", "published", "dropped", "p50_ms", "p95_ms", "adaptation_steps", "miou",
            "rss_max_mb"]
    return markdown_table(rows, cols, ["method", "matched", "published", "dropped", "p50 ms", "p95 ms",
                                       "adaptation steps", "online mIoU", "max RSS MB"], fmt="{:.1f}")
