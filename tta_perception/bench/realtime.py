"""Real-time protocol (Alfarra et al., ICML 2024, "Evaluation of Test-Time Adaptation Under
Computational Time Constraints"): the camera does not wait for the method.

``bench --stream --realtime HZ`` replays the stream as a camera at ``HZ`` frames per second (the
frames of the benchmark stream, after ``--stride``) on a simulated clock, so the result does not
depend on how busy the machine is:

1. Costs, once per method (:func:`measure_costs`): the median time of one prediction and of one
   adaptation step (window of ``--window`` frames, weights published), measured on a throw-away
   copy of the method on windows spread over the first stream; the first window only warms up.
   On a CPU with one torch thread (``--threads 1``) the time is the thread's CPU time, which other
   processes on a shared machine do not inflate (wall time there grew 5x under a load of 14 on 2
   cores); otherwise device-synchronised wall time. They are recorded in the JSON;
   ``--realtime-costs FILE`` reuses a previous run's for an exact repetition.
2. The run (:class:`.clock.RealtimeClock`): frame i arrives at ``i / HZ``. Its prediction starts then
   (or when the previous prediction ends, if predictions alone are slower than the camera; such
   frames are counted as late) with the weights of every step that has *finished* by then. After
   the prediction the frame joins the window and, every ``--adapt-every`` frames, the adapter
   requests a step, as in the node. The step runs only if the simulated worker is idle at that
   moment; a request that finds it busy is dropped (Alfarra et al.: data that arrives while the
   method is busy is predicted by the latest model without adapting on it). A step's weights
   become visible ``step_ms`` after it started.

The adaptation itself runs inline (deterministic), only its visibility is delayed. Not modelled:
CPU contention between prediction and adaptation (the node runs them on two threads), and the
node's coalescing of a request that arrives while a step runs into one that starts when the step
ends (here it is dropped, as in the paper's protocol).
"""
from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from .runner import runs_of

COST_WINDOWS = 4          # timed windows per method (after one warm-up window)


# ------------------------------------------------------------------------------------ costs
def measure_costs(name: str, source_model, stream, opts, *, bundle=None, fisher_batches=None,
                  windows: int = COST_WINDOWS) -> dict[str, Any]:
    """Median prediction and step cost (ms) of method ``name`` on ``stream``'s frames, on a copy
    that is thrown away (the timed steps never reach the benchmark run)."""
    from .common import sync
    from .runner import build_stream_adapter, seed_everything
    from .variants import build_variant

    seed_everything(opts.seed)
    model = copy.deepcopy(source_model).to(opts.device)
    method = build_variant(name, model, bundle=bundle, fisher_batches=fisher_batches, safety=opts.safety)
    adapter = build_stream_adapter(method, opts)
    adapter.on_request = lambda: None            # time the steps separately
    n, w = stream.n_samples, opts.window
    starts = sorted({round(k * max(0, n - w) / windows) for k in range(windows + 1)})
    wanted = {s + j for s in starts for j in range(w)}
    frames: dict[int, Any] = {}
    pos = 0
    for chunk in stream:
        x = chunk.tensor()
        for i in range(x.shape[0]):
            if pos in wanted:
                frames[pos] = x[i:i + 1].to(opts.device)
            pos += 1
        if pos > max(wanted):
            break
    clock, clock_name = cost_clock(opts.device)
    predict, step = [], []
    try:
        for k, s in enumerate(starts):
            for j in range(w):
                if s + j not in frames:
                    continue
                sync(opts.device)
                t0 = clock()
                adapter.predict(frames[s + j])
                sync(opts.device)
                if k:
                    predict.append((clock() - t0) * 1e3)
            sync(opts.device)
            t0 = clock()
            ran = adapter.adapt_now(publish=True)
            sync(opts.device)
            if ran and k:
                step.append((clock() - t0) * 1e3)
    finally:
        adapter.close()
    del method, model, adapter
    # rounded to 1 µs so that a run from the recorded JSON (--realtime-costs) is an exact repetition
    return {"predict_ms": round(float(statistics.median(predict)), 3) if predict else float("nan"),
            "step_ms": round(float(statistics.median(step)), 3) if step else None,
            "predict_samples": len(predict), "step_samples": len(step), "measured_on": stream.name,
            "window": w, "clock": clock_name,
            "how": f"median {clock_name} over {windows} windows of {w} frames spread over {stream.name} "
                   f"(after 1 warm-up window), on a throw-away copy of the method"}


def cost_clock(device) -> tuple[Callable[[], float], str]:
    """The clock costs are measured with: this thread's CPU time where the work runs on it alone
    (CPU, one torch thread), else wall time."""
    import torch

    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time, "thread CPU time"
    return time.perf_counter, "wall time"


def load_costs(path: str | Path) -> dict[str, dict[str, Any]]:
    """The per-method costs recorded by an earlier ``bench --realtime`` run (its results.json)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--realtime-costs {path}: cannot read it ({e})") from None
    costs = (data.get("realtime") or {}).get("costs") if isinstance(data, dict) else None
    if not isinstance(costs, dict) or not costs:
        raise ValueError(f"--realtime-costs {path}: no 'realtime.costs' (not the results.json of a bench "
                         "--realtime run?)")
    return costs


# ------------------------------------------------------------------------------------ report
def realtime_report(streams, offline_runs, rt_runs, methods, task: str, hz: float, costs: dict[str, Any],
                    costs_from: str, out: Path) -> tuple[list[str], dict[str, Any]]:
    """The real-time table beside the offline one: per stream and over the streams, each method's
    score offline and under the camera clock (mean ± 95 % CI over seeds), their paired difference,
    adaptation steps done against the offline run's, and the fraction of frames adapted on.
    Writes ``realtime.csv``; returns the text blocks and the JSON part."""
    from ..metrics import paired_difference
    from .evidence import (CONFIDENCE, format_paired, jsonable_paired, jsonable_rows, paired_vs_best,
                           seed_intervals, summary_intervals)
    from .output import write_rows_csv

    key = "seq" if task == "seg" else "mean"
    text: list[str] = []
    csv_rows: list[dict[str, Any]] = []
    payload: dict[str, Any] = {"hz": hz, "period_ms": 1000.0 / hz, "costs": costs, "costs_from": costs_from,
                               "protocol": __doc__.split("\n\n")[1].strip(), "streams": {}}
    per_off, per_rt = {}, {}

    def steps(runs, m, name, field):
        vals = [(r.streaming.get("realtime") or {}).get(field) if field != "offline_steps"
                else r.streaming.get("adapt_steps") for r in runs_of(runs, m, name)]
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    def table(rows_off, rows_rt, col, stream, title, stats):
        """One row per method: offline and real-time ``col`` with their paired difference, steps, costs."""
        lines = [title, (f"{'method':<10} {'offline':>13} {'real-time':>13} {'rt - offline':>15} {'steps rt/off':>13} "
                         f"{'adapted %':>9} {'predict ms':>10} {'step ms':>8} {'periods':>7}")]
        for m in rows_rt:
            off, rt = rows_off[m]["cells"][col], rows_rt[m]["cells"][col]
            seeds = [s for s in rows_rt[m]["seeds"] if s in rows_off[m]["seeds"]]
            d = paired_difference([rows_rt[m]["values"][col][rows_rt[m]["seeds"].index(s)] for s in seeds],
                                  [rows_off[m]["values"][col][rows_off[m]["seeds"].index(s)] for s in seeds],
                                  CONFIDENCE)
            st = stats[m]
            c = costs.get(m, {})
            step_ms = c.get("step_ms")
            lines.append(f"{m:<10} {off.format(1):>13} {rt.format(1):>13} {d.format(1) if d.n else '–':>15} "
                         f"{st['steps']:>6.0f}/{st['offline_steps']:<6.0f} {100 * st['fraction']:>9.0f} "
                         f"{c.get('predict_ms', float('nan')):>10.1f} "
                         f"{step_ms if step_ms is not None else float('nan'):>8.0f} "
                         f"{(step_ms or float('nan')) * hz / 1000.0:>7.1f}")
            csv_rows.append({"stream": stream, "method": m,
                             "offline_mean": off.mean, "offline_ci95": off.half_width, "realtime_mean": rt.mean,
                             "realtime_ci95": rt.half_width, "difference": d.mean, "difference_ci95": d.half_width,
                             "difference_significant": d.significant, "steps_realtime": st["steps"],
                             "steps_offline": st["offline_steps"], "fraction_adapted": st["fraction"],
                             "late_frames": st["late"], "predict_ms": c.get("predict_ms"), "step_ms": step_ms,
                             "hz": hz, "n_seeds": rt.n})
        return "\n".join(lines)

    all_stats: dict[str, dict[str, float]] = {}
    for st in streams:
        rows_off = seed_intervals(st, offline_runs, methods, task)
        rows_rt = seed_intervals(st, rt_runs, methods, task)
        per_off[st.name], per_rt[st.name] = rows_off, rows_rt
        stats = {m: {"steps": steps(rt_runs, m, st.name, "steps"),
                     "offline_steps": steps(offline_runs, m, st.name, "offline_steps"),
                     "fraction": steps(rt_runs, m, st.name, "fraction_adapted"),
                     "late": steps(rt_runs, m, st.name, "late_frames")} for m in rows_rt}
        for m, v in stats.items():
            a = all_stats.setdefault(m, dict.fromkeys(("steps", "offline_steps", "adapted", "frames", "late"), 0.0))
            a["steps"] += v["steps"]
            a["offline_steps"] += v["offline_steps"]
            a["adapted"] += v["fraction"] * st.n_samples
            a["frames"] += st.n_samples
            a["late"] += v["late"]
        paired = paired_vs_best(rows_rt, key, task)
        text.append("\n".join([table(rows_off, rows_rt, key, st.name, f"{st.name}: real-time protocol at {hz:g} Hz "
                                     f"({key}, {'error' if task == 'cls' else 'mIoU'} %: mean ± 95 % CI over seeds)",
                                     stats), format_paired(paired, f"{st.name} (real time)")]))
        payload["streams"][st.name] = {"rows": jsonable_rows(rows_rt), "stats": stats,
                                       "paired_vs_best": jsonable_paired(paired)}
    if len(streams) > 1:
        s_off, s_rt = summary_intervals(per_off, key), summary_intervals(per_rt, key)
        stats = {m: {"steps": a["steps"], "offline_steps": a["offline_steps"],
                     "fraction": a["adapted"] / a["frames"] if a["frames"] else float("nan"), "late": a["late"]}
                 for m, a in all_stats.items()}
        paired = paired_vs_best(s_rt, "mean", task)
        text.append("\n".join([table(s_off, s_rt, "mean", "summary",
                                     f"summary: real-time protocol at {hz:g} Hz (mean over the streams)", stats),
                               format_paired(paired, "the mean over the streams (real time)")]))
        payload["summary"] = {"rows": jsonable_rows(s_rt), "stats": stats, "paired_vs_best": jsonable_paired(paired)}
    write_rows_csv(Path(out) / "realtime.csv", csv_rows)
    payload["csv"] = str(Path(out) / "realtime.csv")
    return text, payload


def resolve_costs(methods, path: str | None, measure: Callable[[str], dict[str, Any]],
                  log: Callable[[str], None]) -> tuple[dict[str, dict[str, Any]], str]:
    """Each method's costs: from ``--realtime-costs`` (an earlier run's results.json) or measured now."""
    if path:
        known = load_costs(path)
        missing = [m for m in methods if m not in known]
        if missing:
            raise ValueError(f"--realtime-costs {path} has no costs for {', '.join(missing)} (it has "
                             f"{', '.join(known)}); run those methods with --realtime once")
        return {m: known[m] for m in methods}, f"--realtime-costs {path}"
    out = {}
    for m in methods:
        out[m] = measure(m)
        c = out[m]
        step = "–" if c["step_ms"] is None else f"{c['step_ms']:.1f} ms"
        log(f"  real-time costs of {m}: predict {c['predict_ms']:.1f} ms, step {step}")
    return out, "measured in this run"
