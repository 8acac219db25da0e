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
  code against the model forward;
- ``cycles``: whole weather cycles of a looping schedule, each phase scored per cycle (does the node
  do better when the weather comes back?), and ``restart_between_cycles``: between two cycles the
  node saves (``~/save``), is killed with SIGKILL and restarts with ``resume_from`` (does what it
  learned survive a crash?). ``NAME+dm`` runs method NAME with ``domain_memory`` on.

This module is the protocol and the report (table, Markdown, JSON, CSV, PNG: ``bench.output``); the
DDS side (publisher, subscriber, node process) is ``ros.node_bench``, which ``tta-perception
node-bench`` passes in as ``client`` (a ``bench.node_record.DdsSide``: typed specs in, typed records
out), and the statistics of a record are ``bench.node_stats``, so nothing here imports ROS.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..plots import _plt, save_figure
from .delivery import Delivery, format_delivery
from .node_record import CameraSpec, DdsSide, MethodSpec, safe_tag
from .node_stats import camera_result, cameras_line, method_line, method_result
from .output import markdown_table, write_report


def render_frames(schedule: str, count: int, size: tuple[int, int], stride: int = 2,
                  workers: int = 2, seed: int = 0, log: Callable[[str], None] = print,
                  view: str = "front") -> list[Any]:
    """``count`` frames ``0, stride, 2*stride, ...`` of ``schedule`` (rgb, labels, domain) in the
    world of benchmark seed ``seed`` (the rule of ``bench --seeds``: schedule seed + seed), seen by
    the car's camera ``view`` (``world.views``)."""
    from ..world.schedule import load_schedule
    from ..world.sequences import iter_sequence
    from .streams import stream_seeds

    t0 = time.monotonic()
    world = stream_seeds(seed, load_schedule(schedule).seed)["world_seed"]
    frames = [(f.rgb, f.labels, f.domain) for f in iter_sequence(
        schedule, seed=world, size=size, start=0, stop=count * stride, stride=stride, workers=workers, view=view)]
    log(f"[node-bench] rendered {len(frames)} {view} frames of {schedule!r} ({size[0]}x{size[1]}, stride "
        f"{stride}, world seed {world}) in {time.monotonic() - t0:.1f} s")
    return frames


DOMAIN_MEMORY_SUFFIX = "+dm"
#: ``NAME+tf``: NAME with temporal output fusion at the weight measured in docs/video.md (flicker
#: -44 % at unchanged mIoU, stride 1), to time the fusion on the node against NAME alone
FUSION_SUFFIX, FUSION_WEIGHT = "+tf", 0.6


def method_params(name: str) -> tuple[str, dict[str, Any]]:
    """A node-bench method name -> the node's ``method`` and the parameters it implies
    (``NAME+dm``: ``domain_memory`` on; ``NAME+tf``: ``temporal_fusion`` at ``FUSION_WEIGHT``)."""
    if name.endswith(FUSION_SUFFIX):
        base, params = method_params(name[:-len(FUSION_SUFFIX)])
        return base, {**params, "temporal_fusion": FUSION_WEIGHT}
    if name.endswith(DOMAIN_MEMORY_SUFFIX):
        base = name[:-len(DOMAIN_MEMORY_SUFFIX)]
        if base in ("", "source"):
            raise ValueError(f"{name!r}: domain memory needs an adapting method")
        return base, {"domain_memory": True}
    return name, {}


def cycle_plan(schedule: str, stride: int, cycles: int) -> tuple[int, int]:
    """(published frames per weather cycle, frames of ``cycles`` cycles) of a looping schedule."""
    from ..world.schedule import load_schedule

    sched = load_schedule(schedule)
    if not sched.loop or sched.period <= 0:
        raise ValueError(f"--cycles needs a looping schedule (loop: true); {schedule!r} does not loop")
    per_cycle_schedule = int(round(sched.period * sched.fps))
    if per_cycle_schedule % stride:
        raise ValueError(f"--stride {stride} does not divide the {per_cycle_schedule} frames of a "
                         f"{schedule!r} cycle")
    per_cycle = per_cycle_schedule // stride
    return per_cycle, per_cycle * int(cycles)


def private_domain_id() -> int:
    """``ROS_DOMAIN_ID`` when set, else a random private domain (1..101, the safe range on Linux);
    discovery kept to this machine unless the user chose otherwise."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env_id = os.environ.get("ROS_DOMAIN_ID", "").strip()
    return int(env_id) if env_id.isdigit() else random.Random(os.getpid() ^ time.time_ns()).randint(1, 101)


def run_node_bench(methods: Sequence[str] = ("source", "dplot"), *, duration: Optional[float] = 120.0,
                   frames: Optional[int] = None, rate: float = 10.0, size: tuple[int, int] = (128, 256),
                   out: str | Path = "runs/node_bench", schedule: str = "dynamic", stride: int = 2,
                   unique_frames: int = 1200, encoding: str = "bgra8", device: str = "cpu",
                   node_params: Optional[dict[str, Any]] = None, window_s: float = 60.0,
                   overhead: bool = True, overhead_repeats: int = 60, startup_timeout: float = 120.0,
                   drain_s: float = 2.0, domain_id: Optional[int] = None, plot: bool = True,
                   torch_threads: int = 0, cycles: Optional[int] = None, restart_between_cycles: bool = False,
                   seed: int = 0, publisher_qos: str = "reliable", dds_profile: str = "",
                   client: Optional[DdsSide] = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark; ``client`` is the DDS side (``ros.node_bench``: ``measure_overheads`` and
    ``run_method``, see ``DdsSide``), passed in by the command so this module needs no ROS. ``cycles`` replaces
    ``duration``/``frames`` by that many whole weather cycles, every frame rendered. ``publisher_qos``:
    the camera publisher's reliability; ``dds_profile``: what the command set (recorded only: the
    profile must be in the environment before the first participant)."""
    if client is None:
        raise ValueError("run_node_bench needs the DDS client (tta_perception.ros.node_bench)")
    methods = list(methods)
    if len(set(methods)) != len(methods) or not (methods or overhead):
        raise ValueError(f"methods must be distinct and non-empty (or measure the overhead only), got {methods}")
    engine = {m: method_params(m) for m in methods}
    if rate <= 0:
        raise ValueError("--rate must be positive")
    per_cycle = None
    if cycles is not None:
        if int(cycles) < 1:
            raise ValueError("--cycles must be at least 1")
        per_cycle, n_frames = cycle_plan(schedule, stride, int(cycles))
        unique_frames = max(unique_frames, n_frames)  # each cycle its own scenes, as the stream bench
    elif restart_between_cycles:
        raise ValueError("--restart-between-cycles needs --cycles")
    else:
        n_frames = int(frames) if frames else int(round(float(duration or 0) * rate))
    if n_frames <= 0:
        raise ValueError("--frames or --duration must be positive")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if domain_id is None:
        domain_id = private_domain_id()
    rendered = render_frames(schedule, min(n_frames, unique_frames) if methods else 1, size, stride, seed=seed,
                             log=log)
    report: dict[str, Any] = {
        "settings": {"methods": methods, "frames": n_frames, "rate_hz": rate, "size": list(size),
                     "schedule": schedule, "frame_stride": stride, "unique_frames": len(rendered), "seed": seed,
                     "encoding": encoding, "device": device, "node_params": node_params or {},
                     "publisher_qos": publisher_qos, "dds_profile": dds_profile or "as the environment sets",
                     "torch_threads": torch_threads or "torch default (= cores)",
                     "ros_domain_id": domain_id, "cpus": os.cpu_count(), "cycles": cycles,
                     "frames_per_cycle": per_cycle, "restart_between_cycles": bool(restart_between_cycles),
                     "load_avg_at_start": list(os.getloadavg())},
        "methods": {},
    }
    if overhead:
        report.update({k: o.as_dict() for k, o in client.measure_overheads(
            size, overhead_repeats, encoding, rendered[0][0], domain_id, torch_threads).items()})
        for key in ("overhead", "overhead_all_outputs"):
            o = report[key]
            log(f"[node-bench] overhead (in process, source, outputs {'+'.join(o['outputs'])}): forward "
                f"{o['model_forward_ms']:.1f} ms; decode {o['decode_ms']:.2f} + to_input {o['to_input_ms']:.2f} "
                f"+ messages {o['messages_ms']:.2f} + publish {o['publish_ms']:.2f} ms = "
                f"{o['conversion_publishing_pct_of_model']:.1f} % of the forward; + postprocess "
                f"{o['postprocess_ms']:.2f} ms = {o['overhead_pct_of_model']:.1f} %")
    restart_at = [per_cycle * c for c in range(1, int(cycles))] if restart_between_cycles and per_cycle else []
    for m in methods:
        base, implied = engine[m]
        spec = MethodSpec(
            base, m, n_frames, rate, domain_id, encoding=encoding, device=device,
            node_params={**dict(node_params or {}), **implied}, startup_timeout=startup_timeout, drain_s=drain_s,
            torch_threads=torch_threads, window_s=window_s, cycle_frames=per_cycle, restart_at=tuple(restart_at),
            save_path=str((out / f"node_state_{safe_tag(m)}.pt").resolve()) if restart_at else "",
            publisher_qos=publisher_qos)
        report["methods"][m] = method_result(spec, client.run_method(spec, rendered, log), rendered)
        log(method_line(report["methods"][m]))
    report["settings"]["load_avg_at_end"] = list(os.getloadavg())
    if "source" in report["methods"] and "dplot" in report["methods"]:
        s, d = report["methods"]["source"], report["methods"]["dplot"]
        report["ratio_p50_dplot_over_source"] = d["latency_ms"]["p50"] / s["latency_ms"]["p50"]
        report["ratio_p95_dplot_over_source"] = d["latency_ms"]["p95"] / s["latency_ms"]["p95"]
    if per_cycle:
        report["cycles"] = cycle_summary(report, per_cycle, instant_switches(schedule))
    report["text"] = format_report(report)
    files = write_report(out, "node_bench", text=report["text"], payload=report, rows=table_rows(report),
                         markdown=markdown_report(report), digits=None)
    if plot and methods:
        files["png"] = str(plot_report(report, out / "node_bench.png"))
    report["files"] = files
    log(report["text"])
    return report


def instant_switches(schedule: str) -> bool:
    """Whether the schedule's weather changes at once (time to recover is defined only then)."""
    from ..world.schedule import load_schedule

    return bool(load_schedule(schedule).step_times)


def cycle_summary(report: dict[str, Any], per_cycle: int, recovery: bool = True) -> dict[str, Any]:
    """Per method: mIoU per phase and cycle, the gain of the last cycle over the first, the detector's
    purity (``metrics.detector_purity``), what each restart kept and (``recovery``: a schedule with
    instant switches) the time to recover after each change at the full frame rate
    (``metrics.time_to_recover`` on the per-frame mIoU), as a mean per cycle; per ``NAME+dm``
    beside ``NAME``: memory's difference in the last cycle."""
    from ..metrics import detector_purity, recovery_summary, time_to_recover

    out: dict[str, Any] = {"methods": {}, "memory_vs_none": {}, "frames_per_cycle": per_cycle,
                           "recovery_defined": bool(recovery)}
    for m, r in report["methods"].items():
        keys = list(r.get("miou_per_cycle", {}))
        phases = list(dict.fromkeys(k.rsplit("@", 1)[0] for k in keys))
        cycles = sorted({int(k.rsplit("@", 1)[1]) for k in keys})
        cells = {p: {c: r["miou_per_cycle"].get(f"{p}@{c}", float("nan")) for c in cycles} for p in phases}
        gain = {p: cells[p][cycles[-1]] - cells[p][cycles[0]] for p in phases} if len(cycles) > 1 else {}
        det = r.get("detector")
        purity = detector_purity(det["phases"], det["detected"]) if det and det.get("detected") else None
        recoveries = [x.as_dict() for x in time_to_recover(r.get("frame_scores", []))] if recovery else []
        by_cycle: dict[int, list[Any]] = {}
        for x in recoveries:
            by_cycle.setdefault(x["frame"] // per_cycle + 1, []).append(x["frames"])
        ttr = {c: recovery_summary(v) for c, v in sorted(by_cycle.items())}
        out["methods"][m] = {"phases": phases, "cycles": cycles, "miou": cells, "gain_last_over_first": gain,
                             "purity": {k: purity[k] for k in ("one_to_one", "purity", "inverse")} if purity else None,
                             "recovery": recoveries, "recovery_by_cycle": ttr,
                             "restarts": [{k: x.get(k) for k in ("before_frame", "save_s", "restart_s",
                                                                 "killed_exit_code", "domains_known_before",
                                                                 "domains_known_after")}
                                          for x in r.get("restarts", [])]}
    for m, row in out["methods"].items():
        base = m[:-len(DOMAIN_MEMORY_SUFFIX)] if m.endswith(DOMAIN_MEMORY_SUFFIX) else None
        if base in out["methods"] and row["cycles"]:
            last = row["cycles"][-1]
            other = out["methods"][base]["miou"]
            out["memory_vs_none"][m] = {p: row["miou"][p][last] - other.get(p, {}).get(last, float("nan"))
                                        for p in row["phases"]}
    return out


def format_cycles(summary: dict[str, Any]) -> list[str]:
    rows = summary["methods"]
    if not rows:
        return []
    phases = next(iter(rows.values()))["phases"]
    lines = ["mIoU per phase and weather cycle (cycle 1 / cycle 2 ..., gain = last - first):",
             f"{'method':<10}" + "".join(f"{p[:12]:>22}" for p in phases)]
    for m, r in rows.items():
        cells = [" / ".join(f"{r['miou'][p][c]:.1f}" for c in r["cycles"])
                 + (f" ({r['gain_last_over_first'][p]:+.1f})" if r["gain_last_over_first"] else "") for p in phases]
        lines.append(f"{m:<10}" + "".join(f"{c:>22}" for c in cells))
    for m, d in summary["memory_vs_none"].items():
        lines.append(f"{m} - {m[:-len(DOMAIN_MEMORY_SUFFIX)]} in the last cycle: "
                     + ", ".join(f"{p} {v:+.1f}" for p, v in d.items()))
    for m, r in rows.items():
        if r["recovery_by_cycle"]:
            lines.append(f"{m}: time to recover (frames to 90 % of the new phase's plateau, full frame rate): "
                         + "; ".join(f"cycle {c}: {t['mean_frames']:.1f} mean over {t['recovered']}/{t['changes']} "
                                     f"recovered changes" for c, t in r["recovery_by_cycle"].items()))
        if r["purity"]:
            pu = r["purity"]
            lines.append(f"{m}: detector purity one-to-one {pu['one_to_one']:.2f}, majority {pu['purity']:.2f}, "
                         f"phases kept whole {pu['inverse']:.2f} (fractions of scored frames)")
        for x in r["restarts"]:
            lines.append(f"{m}: before frame {x['before_frame']}: ~/save {x['save_s']:.1f} s, SIGKILL (exit "
                         f"{x['killed_exit_code']}), restart with resume_from {x['restart_s']:.1f} s"
                         + (f", domains known {x['domains_known_before']} -> {x['domains_known_after']}"
                            if x["domains_known_before"] is not None else ""))
    return lines


def delivery_of(label: str, r: dict[str, Any]) -> Delivery:
    """A method's frames: published, received and dropped by the node, answered (outputs matched)."""
    nd = r["node_diagnostics"]
    return Delivery(label, int(r["published"]), int(nd["frames_received"] or 0), int(r["matched_stamps"]),
                    int(nd["frames_dropped"] or 0), nd.get("lost_in_transport"), str(nd.get("input_reliability") or ""))


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'method':<8} {'out/pub':>11} {'p50 ms':>7} {'p95 ms':>7} {'node proc/drop':>15} "
             f"{'mIoU':>6} {'acc':>6} {'flicker':>7} {'p50 first/last':>15} {'RSS MB start/end':>17}"]
    for m, r in report["methods"].items():
        nd, g = r["node_diagnostics"], r["growth"]
        lines.append(f"{m:<8} {r['matched_stamps']:>5}/{r['published']:<5} {r['latency_ms']['p50']:>7.0f} "
                     f"{r['latency_ms']['p95']:>7.0f} {str(nd['frames_processed']) + '/' + str(nd['frames_dropped']):>15} "
                     f"{r['miou']:>6.1f} {r['acc']:>6.1f} {r.get('flicker', float('nan')):>7.1f} "
                     f"{g['first_p50_ms']:>7.0f}/{g['last_p50_ms']:<7.0f} "
                     f"{g['rss_first_output_mb']:>8.0f}/{g['rss_end_mb']:<8.0f}")
    deliveries = [delivery_of(m, r) for m, r in report["methods"].items()]
    if deliveries:
        lines += ["", format_delivery(deliveries), ""]
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
    if report.get("cycles"):
        lines += format_cycles(report["cycles"])
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    if report.get("cycles"):
        fig, (ax, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 9.5), height_ratios=(3, 1.4, 2.6))
    else:
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, height_ratios=(3, 1.4))
        ax3 = None
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
    if ax3 is not None:
        _plot_cycles(ax3, report)
    return save_figure(fig, path)


def _plot_cycles(ax: Any, report: dict[str, Any], k: int = 20) -> None:
    """Per-frame mIoU (trailing mean of ``k`` outputs) of every method over the published frames,
    the phases shaded and each restart marked."""
    shaded = False
    phase_colours: dict[str, str] = {}
    for m, r in report["methods"].items():
        rows = r.get("frame_scores") or []
        if not rows:
            continue
        x = [row[0] for row in rows]
        y = np.convolve([row[2] for row in rows], np.ones(k) / k, mode="full")[:len(rows)]
        y[:k - 1] = [float(np.mean([row[2] for row in rows[:i + 1]])) for i in range(min(k - 1, len(rows)))]
        ax.plot(x, y, "-", lw=1, label=f"{m}: {r['miou']:.1f} mIoU")
        if not shaded:  # phase boundaries from the first method's rows
            shaded = True
            start = 0
            for i in range(1, len(rows) + 1):
                if i == len(rows) or rows[i][1] != rows[start][1]:
                    colour = phase_colours.setdefault(rows[start][1], f"C{len(phase_colours) % 10}")
                    end = rows[i][0] if i < len(rows) else rows[-1][0]
                    ax.axvspan(rows[start][0], end, color=colour, alpha=0.08, lw=0)
                    ax.text((rows[start][0] + end) / 2, 0.98, rows[start][1], ha="center", va="top",
                            fontsize=6, transform=ax.get_xaxis_transform())
                    start = i
        for x_restart in (x_["before_frame"] for x_ in r.get("restarts", [])):
            ax.axvline(x_restart, color="k", ls="--", lw=0.8)
    ax.set_xlabel("published frame (dashed: ~/save, SIGKILL, restart with resume_from)")
    ax.set_ylabel(f"mIoU % (trailing {k})")
    ax.legend(loc="lower left", fontsize=7)


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method (the CSV and the Markdown table)."""
    rows = []
    for m, r in report["methods"].items():
        nd, g = r["node_diagnostics"], r["growth"]
        d = delivery_of(m, r)
        rows.append({"method": m, "published": r["published"], "matched": r["matched_stamps"],
                     "received": d.received, "lost_before_node": d.lost_before_node,
                     "lost_in_transport": d.lost_counted, "subscription": d.reliability,
                     "processed": nd["frames_processed"], "dropped": nd["frames_dropped"],
                     "p50_ms": r["latency_ms"]["p50"], "p95_ms": r["latency_ms"]["p95"],
                     "adaptation_steps": nd["adaptation_steps"], "miou": r["miou"], "acc": r["acc"],
                     "flicker": r.get("flicker", float("nan")),
                     "first_p50_ms": g["first_p50_ms"], "last_p50_ms": g["last_p50_ms"],
                     "rss_first_output_mb": g["rss_first_output_mb"], "rss_end_mb": g["rss_end_mb"],
                     "rss_max_mb": g["rss_max_mb"]})
    return rows


def markdown_report(report: dict[str, Any]) -> str:
    rows = table_rows(report)
    if not rows:
        return ""
    cols = ["method", "matched", "published", "received", "dropped", "lost_before_node", "p50_ms", "p95_ms",
            "adaptation_steps", "miou", "flicker", "rss_max_mb"]
    text = markdown_table(rows, cols, ["method", "answered", "published", "received", "dropped", "lost before node",
                                       "p50 ms", "p95 ms",
                                       "adaptation steps", "online mIoU", "label flicker %", "max RSS MB"],
                          fmt="{:.1f}")
    summary = report.get("cycles")
    if summary and summary["methods"]:
        phases = next(iter(summary["methods"].values()))["phases"]
        crow = [{"method": m, **{p: " / ".join(f"{r['miou'][p][c]:.1f}" for c in r["cycles"])
                                 + (f" ({r['gain_last_over_first'][p]:+.1f})" if r["gain_last_over_first"] else "")
                                 for p in phases}} for m, r in summary["methods"].items()]
        text += "\n\nmIoU per phase, cycle 1 / cycle 2 ... (gain):\n\n" + markdown_table(
            crow, ["method", *phases], ["method", *phases])
    return text


# ------------------------------------------------------------------------------------ several cameras
def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, every thread (``/proc/PID/stat``); NaN
    where unreadable."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15


def camera_layouts(cameras: Sequence[str], single: bool = True) -> dict[str, dict[str, Optional[list[str]]]]:
    """The node layouts compared: ``shared`` (one node, ``cameras`` parameter), ``independent`` (one
    single-camera node per camera, all at once) and ``single`` (the first camera's node alone: the
    latency a camera gets with the machine to itself)."""
    out: dict[str, dict[str, Optional[list[str]]]] = {"shared": {"shared": list(cameras)},
                                                       "independent": {c: None for c in cameras}}
    if single:
        out["single"] = {cameras[0]: None}
    return out


def layout_summary(r: dict[str, Any], rate: float) -> dict[str, Any]:
    """Totals of one layout's run: CPU seconds per camera frame, the worst camera's p50/p95, frames
    not output or dropped (% of published), adaptation steps per second, RSS, mean online mIoU."""
    cams, nodes = r["per_camera"], r["per_node"]
    published = sum(c["published"] for c in cams.values())
    dropped = sum((n["frames_dropped"] or 0) for n in nodes.values())
    steps = sum((n["adaptation_steps"] or 0) for n in nodes.values())
    rss_max = max((v for _, v in r["rss_timeline"]), default=float("nan"))
    return {"cameras": len(cams), "nodes": len(nodes), "published": published,
            "cpu_s": sum(n["cpu_s"] for n in nodes.values()),
            "cpu_s_per_frame": sum(n["cpu_s"] for n in nodes.values()) / max(1, published),
            "p50_ms": {c: v["latency_ms"]["p50"] for c, v in cams.items()},
            "p95_ms": {c: v["latency_ms"]["p95"] for c, v in cams.items()},
            "worst_p50_ms": max(v["latency_ms"]["p50"] for v in cams.values()),
            "not_output_pct": 100.0 * sum(v["not_output"] for v in cams.values()) / max(1, published),
            "dropped_pct": 100.0 * dropped / max(1, published), "dropped": dropped,
            "adaptation_steps": steps, "steps_per_s": steps / max(r["publish_wall_s"], 1e-9),
            "rss_max_mb": rss_max, "miou": {c: v["miou"] for c, v in cams.items()},
            "mean_miou": float(np.mean([v["miou"] for v in cams.values()]))}


def camera_goals(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals for one shared node (4 cameras x 10 Hz): <= 1 % dropped, p50 per camera <=
    2x the single-camera node's, RSS <= 1.6 GB, CPU <= 0.6x the independent nodes'."""
    sh, ind, one = summary.get("shared"), summary.get("independent"), summary.get("single")
    goals: dict[str, Any] = {}
    if sh is None:
        return goals
    lost = max(sh["dropped_pct"], sh["not_output_pct"])
    goals["dropped_le_1pct"] = {"value": lost, "met": lost <= 1.0}
    base = one or ind
    if base is not None:
        ref = float(np.median(list(base["p50_ms"].values())))
        ratio = sh["worst_p50_ms"] / ref if ref > 0 else float("nan")
        goals["p50_le_2x_single"] = {"value": ratio, "reference": "single" if one else "independent",
                                     "reference_p50_ms": ref, "met": bool(ratio <= 2.0)}
    goals["rss_le_1600mb"] = {"value": sh["rss_max_mb"], "met": bool(sh["rss_max_mb"] <= 1600)}
    if ind is not None:
        ratio = sh["cpu_s_per_frame"] / ind["cpu_s_per_frame"] if ind["cpu_s_per_frame"] > 0 else float("nan")
        goals["cpu_le_0.6x_independent"] = {"value": ratio, "met": bool(ratio <= 0.6)}
    return goals


def format_cameras(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"{s['method']} on {len(s['cameras'])} cameras ({', '.join(s['cameras'])}) at {s['rate_hz']:g} Hz each, "
             f"{s['size'][0]}x{s['size'][1]}, {s['frames']} frames per camera; load average before "
             f"{', '.join(f'{v:.2f}' for v in s['load_avg_at_start'])}, after "
             f"{', '.join(f'{v:.2f}' for v in s.get('load_avg_at_end', []))}",
             f"{'layout':<12} {'nodes':>5} {'CPU s/frame':>11} {'steps/s':>7} {'drop %':>6} {'lost %':>6} "
             f"{'RSS MB':>7} {'mIoU':>6}  p50 / p95 ms per camera"]
    for name, t in report["summary"].items():
        cams = " ".join(f"{c} {t['p50_ms'][c]:.0f}/{t['p95_ms'][c]:.0f}" for c in t["p50_ms"])
        lines.append(f"{name:<12} {t['nodes']:>5} {t['cpu_s_per_frame']:>11.3f} {t['steps_per_s']:>7.2f} "
                     f"{t['dropped_pct']:>6.1f} {t['not_output_pct']:>6.1f} {t['rss_max_mb']:>7.0f} "
                     f"{t['mean_miou']:>6.1f}  {cams}")
    lines.append("mIoU per camera: " + "; ".join(
        f"{name} " + ", ".join(f"{c} {v:.1f}" for c, v in t["miou"].items()) for name, t in report["summary"].items()))
    for g, v in report["goals"].items():
        lines.append(f"goal {g}: {v['value']:.3g} -> {'met' if v['met'] else 'NOT met'}"
                     + (f" (reference: {v['reference']} p50 {v['reference_p50_ms']:.0f} ms)" if "reference" in v else ""))
    return "\n".join(lines)


def plot_cameras(report: dict[str, Any], path: Path) -> Path:
    """Latency over time per layout and camera (trailing median), RSS of each layout's nodes."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, height_ratios=(3, 1.4))
    styles = {"shared": "-", "independent": "--", "single": ":"}
    for li, (name, r) in enumerate(report["layouts"].items()):
        for ci, (c, v) in enumerate(r["per_camera"].items()):
            t, lat = v["timeline"]["t_s"], v["timeline"]["latency_ms"]
            if not lat:
                continue
            k = 20
            med = [float(np.median(lat[max(0, i - k):i + 1])) for i in range(len(lat))]
            ax.plot(t, med, styles.get(name, "-"), color=f"C{ci}", lw=1,
                    label=f"{name} {c}: p50 {v['latency_ms']['p50']:.0f} ms")
        ax2.plot([x[0] for x in r["rss_timeline"]], [x[1] for x in r["rss_timeline"]], styles.get(name, "-"),
                 color="k", label=f"{name}: {len(r['per_node'])} node(s)")
    s = report["settings"]
    ax.set_title(f"tta_node, {s['method']}: one node for {len(s['cameras'])} cameras vs one node per camera, "
                 f"{s['rate_hz']:g} Hz each, {s['size'][0]}x{s['size'][1]}")
    ax.set_ylabel("publish -> class_ids latency (ms, trailing median)")
    ax.set_yscale("log")
    ax.legend(loc="upper right", fontsize=6, ncol=2)
    ax2.set_ylabel("RSS of the nodes (MB)")
    ax2.set_xlabel("seconds since the first frame")
    ax2.legend(loc="lower right", fontsize=7)
    return save_figure(fig, path)


def run_camera_bench(method: str = "dplot", cameras: int = 4, *, duration: Optional[float] = 60.0,
                     frames: Optional[int] = None, rate: float = 10.0, size: tuple[int, int] = (128, 256),
                     out: str | Path = "runs/node_bench_cameras", schedule: str = "dynamic", stride: int = 2,
                     encoding: str = "bgra8", device: str = "cpu", node_params: Optional[dict[str, Any]] = None,
                     startup_timeout: float = 120.0, drain_s: float = 2.0, plot: bool = True,
                     torch_threads: int = 0, seed: int = 0, single: bool = True,
                     client: Optional[DdsSide] = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``node-bench --cameras N``: the same frames of N cameras of one car (``world.views``) to one
    shared node, then to N single-camera nodes at once, then (``single``) to the first camera's node
    alone; the layouts run one after the other on this machine (``camera_layouts``)."""
    from ..world.views import views_for

    if client is None:
        raise ValueError("run_camera_bench needs the DDS client (tta_perception.ros.node_bench)")
    if rate <= 0:
        raise ValueError("--rate must be positive")
    cams = views_for(cameras)
    n_frames = int(frames) if frames else int(round(float(duration or 0) * rate))
    if n_frames <= 0:
        raise ValueError("--frames or --duration must be positive")
    base, implied = method_params(method)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    domain_id = private_domain_id()
    rendered = {c: render_frames(schedule, n_frames, size, stride, seed=seed, log=log, view=c) for c in cams}
    report: dict[str, Any] = {
        "settings": {"method": method, "cameras": cams, "frames": n_frames, "rate_hz": rate, "size": list(size),
                     "schedule": schedule, "frame_stride": stride, "seed": seed, "encoding": encoding,
                     "device": device, "node_params": node_params or {}, "cpus": os.cpu_count(),
                     "torch_threads": torch_threads or "torch default (= cores)", "ros_domain_id": domain_id,
                     "load_avg_at_start": list(os.getloadavg())},
        "layouts": {}}
    for name, nodes in camera_layouts(cams, single and cameras > 1).items():
        spec = CameraSpec(base, f"{method} {name}", n_frames, rate, domain_id, encoding=encoding, device=device,
                          node_params={**dict(node_params or {}), **implied}, startup_timeout=startup_timeout,
                          drain_s=drain_s, torch_threads=torch_threads, nodes=nodes)
        report["layouts"][name] = camera_result(spec, client.run_cameras(spec, rendered, log))
        log(cameras_line(report["layouts"][name]))
    report["settings"]["load_avg_at_end"] = list(os.getloadavg())
    report["summary"] = {n: layout_summary(r, rate) for n, r in report["layouts"].items()}
    report["goals"] = camera_goals(report["summary"])
    report["text"] = format_cameras(report)
    rows = [{"layout": n, "camera": c, "p50_ms": t["p50_ms"][c], "p95_ms": t["p95_ms"][c], "miou": t["miou"][c],
             "cpu_s_per_frame": t["cpu_s_per_frame"], "steps_per_s": t["steps_per_s"], "dropped_pct": t["dropped_pct"],
             "not_output_pct": t["not_output_pct"], "rss_max_mb": t["rss_max_mb"]}
            for n, t in report["summary"].items() for c in t["p50_ms"]]
    md = markdown_table(rows, list(rows[0]), list(rows[0]), fmt="{:.2f}") if rows else ""
    files = write_report(out, "node_bench_cameras", text=report["text"], payload=report, rows=rows, markdown=md,
                         digits=None)
    if plot:
        files["png"] = str(plot_cameras(report, out / "node_bench_cameras.png"))
    report["files"] = files
    log(report["text"])
    return report
