"""The long-drive report of ``bench --stream`` on a looping sequence (``dynamic --cycles N``, N >= 3,
with a ``source`` row): does a method keep its gain over the source model through hours of
driving, or drift below it?

Per method and weather cycle: the mIoU of the whole cycle and of each phase, and method − source on
the same frames, per seed, as the mean with its 95 % paired interval over seeds
(``metrics.paired_difference``; one seed: the value, n=1). The **trend** is the slope of
(method − source) per hour of driving, the hours taken at each cycle's middle frame (frame index /
fps / 3600; the indices include the stride): with several seeds the Student-t interval over seeds of
the per-seed least-squares slopes; with one seed the least-squares slope over the cycles with the
interval of its standard error (t with n_cycles − 2 degrees of freedom). Also the first cycle whose
mean gap is below 0 and the first whose interval is entirely below 0, and the adaptation steps per
hour of driving. Scoring is in ``metrics``; this module arranges the runs into text, CSV, PNG, JSON.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

from ..metrics import Interval, paired_difference, t_interval
from .output import write_rows_csv
from .runner import MethodRun, runs_of
from .streams import BenchStream

CONFIDENCE = 0.95
MIN_CYCLES = 3
SOURCE = "source"


def cycle_hours(run: MethodRun, cycle_frames: int, fps: float) -> dict[int, float]:
    """Hours of driving at the middle frame of each cycle the run scored."""
    span: dict[int, tuple[int, int]] = {}
    for x in run.series_x:
        c = int(x) // cycle_frames + 1
        lo, hi = span.get(c, (x, x))
        span[c] = (min(lo, x), max(hi, x))
    return {c: (lo + hi) / 2 / fps / 3600 for c, (lo, hi) in sorted(span.items())}


def drive_hours(run: MethodRun, fps: float, stride: int) -> float:
    """Hours of driving the run covered (its first to its last frame, one stride past it)."""
    if not run.series_x:
        return float("nan")
    return (max(run.series_x) - min(run.series_x) + stride) / fps / 3600


def ols(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of ys on xs and its standard error (NaN with fewer than 3 points)."""
    n = len(xs)
    if n < 2:
        return float("nan"), float("nan")
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return float("nan"), float("nan")
    slope = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    if n < 3:
        return slope, float("nan")
    ssr = math.fsum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return slope, math.sqrt(ssr / (n - 2) / sxx)


def slope_interval(hours: Sequence[float], gaps_by_seed: Sequence[Sequence[float]]) -> dict[str, Any]:
    """The trend of the gap per hour: over seeds (t interval of the per-seed OLS slopes) with two or
    more seeds, else the one seed's OLS slope with its standard-error interval (t, n − 2 dof)."""
    from scipy.stats import t as student_t

    slopes = [ols(hours, g)[0] for g in gaps_by_seed]
    if len(gaps_by_seed) >= 2:
        iv = t_interval(slopes, CONFIDENCE)
        return {"slope": iv.mean, "half_width": iv.half_width, "low": iv.low, "high": iv.high, "n_seeds": iv.n,
                "n_cycles": len(hours), "per_seed": slopes,
                "how": f"t interval over {iv.n} seeds of the per-seed least-squares slopes"}
    slope, se = ols(hours, gaps_by_seed[0]) if gaps_by_seed else (float("nan"), float("nan"))
    dof = len(hours) - 2
    half = float(student_t.ppf(0.5 + CONFIDENCE / 2, dof)) * se if dof >= 1 and math.isfinite(se) else float("nan")
    return {"slope": slope, "half_width": half, "low": slope - half, "high": slope + half, "n_seeds": 1,
            "n_cycles": len(hours), "per_seed": slopes,
            "how": f"least-squares slope over {len(hours)} cycles, interval from its standard error "
                   f"(t, {dof} dof); n=1 seed"}


def long_drive_rows(stream: BenchStream, runs: Sequence[MethodRun], methods: Sequence[str]) -> Optional[dict[str, Any]]:
    """Everything the report shows for one stream, or None where it does not apply (no looping
    sequence, fewer than ``MIN_CYCLES`` cycles, no source row)."""
    cycle_frames, fps = getattr(stream, "cycle_frames", None), float(stream.info.get("fps") or 0)
    stride = int(stream.info.get("stride") or 1)
    src = {r.seed: r for r in runs_of(runs, SOURCE, stream.name) if r.miou_by_cycle}
    if not cycle_frames or fps <= 0 or not src:
        return None
    first_src = next(iter(src.values()))
    cycles = sorted(first_src.miou_by_cycle)
    if len(cycles) < MIN_CYCLES:
        return None
    hours_of = cycle_hours(first_src, cycle_frames, fps)
    hours = [hours_of[c] for c in cycles]
    phases = list(dict.fromkeys(k.rsplit("@", 1)[0] for k in first_src.domains_by_cycle))
    out: dict[str, Any] = {"cycles": cycles, "hours": dict(zip(cycles, hours)), "phases": phases,
                           "drive_hours": drive_hours(first_src, fps, stride), "methods": {}}
    for m in methods:
        if m == SOURCE:
            continue
        rs = {r.seed: r for r in runs_of(runs, m, stream.name) if r.seed in src and r.miou_by_cycle}
        if not rs:
            continue
        seeds = list(rs)
        mine = {s: rs[s].miou_by_cycle for s in seeds}
        base = {s: src[s].miou_by_cycle for s in seeds}
        per_cycle: dict[int, Any] = {}
        for c in cycles:
            a = [mine[s].get(c, float("nan")) for s in seeds]
            b = [base[s].get(c, float("nan")) for s in seeds]
            cell = {"hours": hours_of[c], "miou": t_interval(a, CONFIDENCE), "gap": paired_difference(a, b, CONFIDENCE),
                    "phases": {}}
            for p in phases:
                key = f"{p}@{c}"
                pa = [rs[s].domains_by_cycle.get(key, float("nan")) for s in seeds]
                pb = [src[s].domains_by_cycle.get(key, float("nan")) for s in seeds]
                if any(math.isfinite(v) for v in pa):
                    cell["phases"][p] = {"miou": t_interval(pa, CONFIDENCE), "gap": paired_difference(pa, pb, CONFIDENCE)}
            per_cycle[c] = cell
        gaps_by_seed = [[mine[s].get(c, float("nan")) - base[s].get(c, float("nan")) for c in cycles] for s in seeds]
        below = [c for c in cycles if per_cycle[c]["gap"].mean < 0]
        sig = [c for c in cycles if per_cycle[c]["gap"].n >= 2 and per_cycle[c]["gap"].high < 0]
        steps = [rs[s].streaming.get("adapt_steps", 0) / drive_hours(rs[s], fps, stride) for s in seeds
                 if rs[s].streaming]
        gap_means = [per_cycle[c]["gap"].mean for c in cycles]
        out["methods"][m] = {
            "seeds": seeds, "cycles": per_cycle, "gaps_by_seed": dict(zip(seeds, gaps_by_seed)),
            "mean_gap": math.fsum(gap_means) / len(gap_means),
            "slope_per_hour": slope_interval(hours, gaps_by_seed),
            "first_below_source": below[0] if below else None,
            "first_significantly_below_source": sig[0] if sig else None,
            "adapt_steps_per_hour": math.fsum(steps) / len(steps) if steps else float("nan")}
    return out if out["methods"] else None


def _gap(iv: Interval) -> str:
    if math.isnan(iv.mean):
        return "–"
    if iv.n < 2 or math.isnan(iv.half_width):
        return f"{iv.mean:+.1f}"
    return f"{iv.mean:+.1f} ± {iv.half_width:.1f}"


def format_long_drive(rows: dict[str, Any], name: str) -> str:
    cycles = rows["cycles"]
    first, last = cycles[0], cycles[-1]
    seeds = sorted({s for r in rows["methods"].values() for s in r["seeds"]})
    lines = [f"{name}: long drive, {len(cycles)} weather cycles ({rows['drive_hours']:.2f} h of driving): method - "
             f"source mIoU points per cycle, paired by seed (seeds {seeds}; mean ± 95 % interval"
             + ("" if len(seeds) >= 2 else ", n=1: the value") + ")",
             f"{'method':<14}{'cycle ' + str(first):>14}{'cycle ' + str(last):>14}{'mean gap':>10}"
             f"{'slope / h [95 % interval]':>30}{'below source (mean / sig.)':>28}{'steps / h':>11}"]
    hows = []
    for m, r in rows["methods"].items():
        sl = r["slope_per_hour"]
        interval = (f"[{sl['low']:+.1f}, {sl['high']:+.1f}]" if math.isfinite(sl["half_width"]) else "[–]")
        below = (f"{r['first_below_source'] or '–'} / "
                 f"{r['first_significantly_below_source'] or ('–' if len(r['seeds']) >= 2 else 'n=1')}")
        slope = f"{sl['slope']:+.1f} {interval}"
        lines.append(f"{m:<14}{_gap(r['cycles'][first]['gap']):>14}{_gap(r['cycles'][last]['gap']):>14}"
                     f"{r['mean_gap']:>+10.1f}{slope:>30}{below:>28}{r['adapt_steps_per_hour']:>11,.0f}")
        hows.append(sl["how"])
    lines.append("slope: " + "; ".join(dict.fromkeys(hows)) + "; hours at each cycle's middle frame")
    return "\n".join(lines)


def csv_rows(rows: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for m, r in rows["methods"].items():
        for c in rows["cycles"]:
            cell = r["cycles"][c]
            parts = [("cycle", cell["miou"], cell["gap"])] + [(p, v["miou"], v["gap"]) for p, v in cell["phases"].items()]
            for part, miou, gap in parts:
                out.append({"method": m, "cycle": c, "hours": cell["hours"], "part": part, "miou": miou.mean,
                            "miou_ci95": miou.half_width, "gap_vs_source": gap.mean, "gap_low": gap.low,
                            "gap_high": gap.high, "gap_ci95": gap.half_width, "seeds": gap.n})
    return out


def jsonable(rows: dict[str, Any]) -> dict[str, Any]:
    methods = {}
    for m, r in rows["methods"].items():
        methods[m] = {
            "seeds": r["seeds"], "mean_gap": r["mean_gap"], "slope_per_hour": r["slope_per_hour"],
            "first_below_source": r["first_below_source"],
            "first_significantly_below_source": r["first_significantly_below_source"],
            "adapt_steps_per_hour": r["adapt_steps_per_hour"],
            "gaps_by_seed": {str(s): g for s, g in r["gaps_by_seed"].items()},
            "cycles": {str(c): {"hours": cell["hours"], "miou": cell["miou"].as_dict(), "gap": cell["gap"].as_dict(),
                                "phases": {p: {"miou": v["miou"].as_dict(), "gap": v["gap"].as_dict()}
                                           for p, v in cell["phases"].items()}}
                       for c, cell in r["cycles"].items()}}
    return {"cycles": rows["cycles"], "hours": {str(c): h for c, h in rows["hours"].items()}, "phases": rows["phases"],
            "drive_hours": rows["drive_hours"], "methods": methods}


def plot_long_drive(path: Path, rows: dict[str, Any], title: str) -> Path:
    """x: hours of driving, y: method − source mIoU per cycle; the interval shaded with >= 2 seeds."""
    from ..plots import _plt, save_figure

    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4))
    hours = [rows["hours"][c] for c in rows["cycles"]]
    for m, r in rows["methods"].items():
        gaps = [r["cycles"][c]["gap"] for c in rows["cycles"]]
        line, = ax.plot(hours, [g.mean for g in gaps], marker="o", ms=3, lw=1.5, label=m)
        if len(r["seeds"]) >= 2:
            ax.fill_between(hours, [g.low for g in gaps], [g.high for g in gaps], color=line.get_color(), alpha=0.2,
                            lw=0)
    ax.axhline(0.0, color="0.3", ls="--", lw=1)
    ax.set_xlabel("hours of driving")
    ax.set_ylabel("method - source mIoU (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, len(rows["methods"])))
    ax.set_title(title)
    return save_figure(fig, path)


def long_drive_report(streams: Sequence[BenchStream], runs: Sequence[MethodRun], methods: Sequence[str],
                      out: str | Path, plot: bool = True) -> tuple[list[str], dict[str, Any]]:
    """Text, ``long_drive_<stream>.csv`` / ``.png`` and the JSON of every stream the report applies to."""
    text, payload = [], {}
    for st in streams:
        rows = long_drive_rows(st, runs, methods)
        if rows is None:
            continue
        safe = st.name.replace("/", "_")
        csv_path = write_rows_csv(Path(out) / f"long_drive_{safe}.csv", csv_rows(rows))
        text.append(format_long_drive(rows, st.name))
        payload[st.name] = {**jsonable(rows), "csv": str(csv_path)}
        if plot:
            png = plot_long_drive(Path(out) / f"long_drive_{safe}.png", rows,
                                  f"{st.name}: method - source over {len(rows['cycles'])} weather cycles")
            payload[st.name]["png"] = str(png)
    return text, payload
