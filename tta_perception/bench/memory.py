"""``tta-perception node-bench --memory``: the node's resident memory under the parameter values it
accepts, over DDS.

One ``tta_node`` process (default parameters, ``max_memory_mb`` at its default) is taken through:

- the default configuration, and the largest frame it accepts (``max_image_pixels``);
- for every method, the largest input size it accepts from a ladder (128x256 ... 1024x2048, window
  4), offered from the top down with ``set_parameters_atomically``; and the largest window at
  128x256 (256 ... 4);
- a configuration it must refuse (1024x2048 with DPLOT, what took the node to 20 GB before);
- back to the default: does the RSS return near where it was (``malloc_trim`` after reloads)?

Every accepted configuration adapts at least once on frames of its input size while the node's RSS
is sampled every 50 ms. The goal: the peak RSS of every accepted configuration <= 2.5 GB. The DDS
side is ``ros.node_bench.run_memory_sweep``, passed in by the command.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .node import private_domain_id
from .node_record import DdsSide, SweepStep
from .output import markdown_table, write_report

GOAL_MB = 2500.0
SIZES = ((1024, 2048), (768, 1536), (512, 1024), (384, 768), (256, 512), (192, 384), (128, 256))
WINDOWS = (256, 128, 64, 32, 16, 8, 4)
METHODS = ("source", "norm", "tent", "eata", "sar", "cotta", "rmt", "dplot")


def sweep_steps(methods: Sequence[str] = METHODS, sizes: Sequence[tuple[int, int]] = SIZES,
                windows: Sequence[int] = WINDOWS, max_image_pixels: int = 4096 * 4096) -> list[SweepStep]:
    """The steps (see the module docstring); method changes go with the defaults of the rest."""
    side = int(max_image_pixels ** 0.5)
    steps = [SweepStep("default (dplot 128x256, window 4)", [{}]),
             SweepStep(f"largest frame ({side}x{side}, default configuration)", [{}], frame_size=(side, side))]
    for m in methods:
        steps.append(SweepStep(f"{m}: largest input size, window 4",
                               [{"method": m, "input_size": list(s), "window": 4} for s in sizes]))
    steps.append(SweepStep("dplot: largest window at 128x256",
                           [{"method": "dplot", "input_size": [128, 256], "window": w} for w in windows]))
    steps.append(SweepStep("must refuse: dplot 1024x2048", [{"method": "dplot", "input_size": [1024, 2048], "window": 4}]))
    steps.append(SweepStep("back to the default", [{"method": "dplot", "input_size": [0, 0], "window": 4}]))
    return steps


def run_memory_bench(*, out: str | Path = "runs/node_bench_memory", methods: Sequence[str] = METHODS,
                     sizes: Sequence[tuple[int, int]] = SIZES, windows: Sequence[int] = WINDOWS,
                     device: str = "cpu", domain_id: Optional[int] = None, torch_threads: int = 0,
                     frames_per_step: int = 10, max_image_pixels: int = 4096 * 4096,
                     client: Optional[DdsSide] = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    if client is None:
        raise ValueError("run_memory_bench needs the DDS client (tta_perception.ros.node_bench)")
    if domain_id is None:
        domain_id = private_domain_id()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    # reliable: frames of tens of MB arrive whole (best effort drops a fragmented message)
    result = client.run_memory_sweep(sweep_steps(methods, sizes, windows, max_image_pixels),
                                     node_params={"device": device, "qos_reliability": "reliable"},
                                     domain_id=domain_id, log=log, torch_threads=torch_threads,
                                     frames_per_step=frames_per_step).as_dict()
    accepted = [r for r in result["steps"] if r["accepted"]]
    peak = max((r["rss_peak_mb"] for r in accepted), default=float("nan"))
    report = {"settings": {"methods": list(methods), "sizes": [list(s) for s in sizes], "windows": list(windows),
                           "device": device, "cpus": os.cpu_count(), "ros_domain_id": domain_id,
                           "wall_s": round(time.monotonic() - t0, 1)},
              **result, "peak_rss_mb": peak, "goal_mb": GOAL_MB, "within_goal": bool(peak <= GOAL_MB)}
    rows = table_rows(report)
    report["text"] = format_report(report, rows)
    report["files"] = write_report(out, "node_bench_memory", text=report["text"], payload=report, rows=rows,
                                   markdown=markdown_table(rows, ["step", "accepted", "peak_rss_mb",
                                                                  "rss_end_mb", "adaptation_steps", "refused"],
                                                           ["step", "accepted configuration", "peak RSS MB",
                                                            "RSS after MB", "adaptation steps", "refused first"],
                                                           fmt="{:.0f}"), digits=None)
    log(report["text"])
    return report


def _short(params: Optional[dict[str, Any]]) -> str:
    if params is None:
        return "none"
    if not params:
        return "default"
    parts = []
    if "method" in params:
        parts.append(params["method"])
    if "input_size" in params:
        parts.append("x".join(map(str, params["input_size"])) if params["input_size"] != [0, 0] else "model size")
    if "window" in params:
        parts.append(f"window {params['window']}")
    return " ".join(parts)


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in report["steps"]:
        rows.append({"step": r["name"], "accepted": _short(r.get("params")),
                     "peak_rss_mb": r.get("rss_peak_mb", float("nan")), "rss_end_mb": r.get("rss_end_mb"),
                     "adaptation_steps": r.get("adaptation_steps"),
                     "refused": "; ".join(_short(x["params"]) for x in r["refused"]) or "-"})
    return rows


def format_report(report: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [f"node RSS under the accepted parameter values (baseline {report['baseline_rss_mb']:.0f} MB, "
             f"device {report['settings']['device']})"]
    w = max(len(r["step"]) for r in rows) if rows else 10
    lines.append(f"{'step':<{w}}  {'accepted':<26} {'peak MB':>8} {'after MB':>8} {'steps':>5}  refused first")
    for r in rows:
        peak = r["peak_rss_mb"]
        lines.append(f"{r['step']:<{w}}  {r['accepted']:<26} {peak:>8.0f} {r['rss_end_mb']:>8.0f} "
                     f"{str(r['adaptation_steps'] if r['adaptation_steps'] is not None else '-'):>5}  {r['refused']}")
    lines.append(f"peak RSS of every accepted configuration: {report['peak_rss_mb']:.0f} MB "
                 f"(goal <= {GOAL_MB:.0f} MB: {'met' if report['within_goal'] else 'NOT met'})")
    first_default = next((r for r in report["steps"] if r["accepted"]), None)
    last = report["steps"][-1] if report["steps"] else None
    if first_default and last and last.get("accepted"):
        lines.append(f"RSS after the default configuration: {first_default['rss_end_mb']:.0f} MB at the start, "
                     f"{last['rss_end_mb']:.0f} MB after the sweep")
    return "\n".join(lines)
