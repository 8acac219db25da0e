"""Benchmark report: paper-style tables, the headline number, JSON + CSV + PNG.

Tables: rows = methods, columns = domains (the 15 corruptions; a sequence's weather domains), last
column = mean over the columns (the paper's "mean error"). Classification cells are error %,
segmentation cells mIoU % (per domain; the ``seq`` column is the mIoU over the whole sequence, the
CarlaTTA metric). Several seeds: cells are means over seeds (the JSON keeps every run); their 95 %
intervals, DPLOT's paired comparison with the best prior method and the time to recover are in
``bench/evidence.py``, the real-time protocol's table in ``bench/realtime.py``.

Headline (as the paper's abstract): relative error reduction of DPLOT over the best *prior* method
in the run (source, norm, tent, eata, sar, cotta, rmt; the DPLOT ablations and +BS variants are
not prior methods): ``(err_best - err_dplot) / err_best``. For segmentation the error is
100 - mIoU.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import atomic_write_text
from .runner import MethodRun, runs_of
from .streams import BenchStream
from .variants import VARIANTS

SHORT = {"gaussian_noise": "gauss", "shot_noise": "shot", "impulse_noise": "impul", "defocus_blur": "defoc",
         "glass_blur": "glass", "motion_blur": "motn", "zoom_blur": "zoom", "snow": "snow", "frost": "frost",
         "fog": "fog", "brightness": "brit", "contrast": "contr", "elastic_transform": "elast",
         "pixelate": "pixel", "jpeg_compression": "jpeg"}


def _mean(vals: Sequence[float]) -> float:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _std(vals: Sequence[float]) -> float:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    return float(np.std(vals)) if len(vals) > 1 else 0.0


def aggregate(stream: BenchStream, runs: list[MethodRun], methods: list[str]) -> dict[str, Any]:
    """Per method: cells (mean over seeds), mean column, costs."""
    rows: dict[str, Any] = {}
    for m in methods:
        rs = runs_of(runs, m, stream.name)
        if not rs:
            continue
        cells = {c: _mean([r.domains.get(stream.column_domain[c], float("nan")) for r in rs]) for c in stream.columns}
        per_seed_mean = [_mean([r.domains.get(stream.column_domain[c], float("nan")) for c in stream.columns])
                         for r in rs]
        row = {
            "cells": cells,
            "mean": _mean(list(cells.values())),
            "mean_std_over_seeds": _std(per_seed_mean),
            "overall": _mean([r.overall for r in rs]),
            "all_domains": {d: _mean([r.domains.get(d, float("nan")) for r in rs]) for d in rs[0].domains},
            "ms_per_frame": _mean([r.ms_per_frame for r in rs]),
            "peak_mem_mib": max(r.peak_mem_mib for r in rs),
            "mem_kind": rs[0].mem_kind,
            "setup_s": _mean([r.setup_s for r in rs]),
            "frames": rs[0].frames,
            "seeds": [r.seed for r in rs],
            "stats": rs[0].stats,
        }
        if rs[0].streaming:
            row["streaming"] = {"predict_ms": _mean([r.streaming["mean_predict_ms"] for r in rs]),
                                "adapt_ms_per_step": _mean([r.streaming["mean_adapt_ms"] for r in rs]),
                                "adapt_steps": rs[0].streaming["adapt_steps"],
                                "errors": sum(r.streaming["errors"] for r in rs)}
        rows[m] = row
    return rows


def add_ratios(rows: dict[str, Any], source_fwd_ms: float) -> None:
    for row in rows.values():
        row["x_source_forward"] = row["ms_per_frame"] / source_fwd_ms if source_fwd_ms > 0 else float("nan")
        if "streaming" in row:
            row["streaming"]["predict_x_source_forward"] = row["streaming"]["predict_ms"] / source_fwd_ms


def headline(rows: dict[str, Any], task: str, key: str = "mean") -> dict[str, Any] | None:
    """DPLOT against the best prior method on the ``key`` column (paper's relative error reduction)."""
    if "dplot" not in rows:
        return None
    err = (lambda v: v) if task == "cls" else (lambda v: 100.0 - v)
    priors = {m: r[key] for m, r in rows.items() if VARIANTS[m].prior and not math.isnan(r[key])}
    if not priors:
        return None
    best = min(priors, key=lambda m: err(priors[m]))
    e_best, e_dplot = err(priors[best]), err(rows["dplot"][key])
    rel = (e_best - e_dplot) / e_best if e_best > 0 else float("nan")
    return {"best_prior": best, "best_prior_value": priors[best], "dplot_value": rows["dplot"][key],
            "best_prior_error": e_best, "dplot_error": e_dplot, "relative_error_reduction": rel,
            "dplot_wins": bool(e_dplot < e_best), "column": key,
            "metric": "error %" if task == "cls" else "mIoU % (error = 100 - mIoU)"}


def format_headline(h: dict[str, Any] | None, task: str) -> str:
    if h is None:
        return "headline: needs dplot and at least one prior method in the run"
    if task == "cls":
        return (f"headline: DPLOT {h['dplot_error']:.1f} % vs best prior method ({h['best_prior']}) "
                f"{h['best_prior_error']:.1f} % error -> relative error reduction {100 * h['relative_error_reduction']:+.1f} %"
                f" (paper, CIFAR100-C: 26.3 -> 23.9, +9.1 %)")
    return (f"headline: DPLOT {h['dplot_value']:.1f} vs best prior method ({h['best_prior']}) "
            f"{h['best_prior_value']:.1f} mIoU -> {h['dplot_value'] - h['best_prior_value']:+.1f} points, "
            f"relative error (100-mIoU) reduction {100 * h['relative_error_reduction']:+.1f} %")


def format_table(rows: dict[str, Any], columns: Sequence[str], title: str, extra: Sequence[str] = ()) -> str:
    heads = [SHORT.get(c, c) for c in columns] + ["mean"] + list(extra)
    w = max(6, *(len(h) for h in heads))
    mw = max(8, *(len(m) for m in rows)) if rows else 8
    lines = [title, f"{'method':<{mw}} " + " ".join(f"{h:>{w}}" for h in heads)]
    for m, r in rows.items():
        vals = [r["cells"][c] for c in columns] + [r["mean"]] + [r.get(e, float("nan")) for e in extra]
        lines.append(f"{m:<{mw}} " + " ".join(f"{v:>{w}.1f}" for v in vals))
    return "\n".join(lines)


def format_costs(rows: dict[str, Any], source_fwd_ms: float, streaming: bool) -> str:
    kind = next(iter(rows.values()))["mem_kind"] if rows else ""
    mw = max(8, *(len(m) for m in rows)) if rows else 8
    head = f"{'method':<{mw}} {'ms/frame':>9} {'x src fwd':>9} {'peak MiB':>9}"
    if streaming:
        head += f" {'predict ms':>10} {'adapt ms/step':>13} {'steps':>6}"
    lines = [f"cost (source forward pass: {source_fwd_ms:.2f} ms/frame; memory: {kind})", head]
    for m, r in rows.items():
        line = f"{m:<{mw}} {r['ms_per_frame']:>9.2f} {r['x_source_forward']:>9.2f} {r['peak_mem_mib']:>9.1f}"
        if streaming and "streaming" in r:
            s = r["streaming"]
            line += f" {s['predict_ms']:>10.2f} {s['adapt_ms_per_step']:>13.1f} {s['adapt_steps']:>6d}"
        lines.append(line)
    return "\n".join(lines)


def write_csv(path: Path, rows: dict[str, Any], columns: Sequence[str], extra: Sequence[str] = ()) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    stream_cols = ["predict_ms", "adapt_ms_per_step"] if any("streaming" in r for r in rows.values()) else []
    w.writerow(["method", *columns, "mean", *extra, "ms_per_frame", "x_source_forward", "peak_mem_mib",
                "mem_kind", *stream_cols])
    for m, r in rows.items():
        s = r.get("streaming", {})
        w.writerow([m, *(f"{r['cells'][c]:.2f}" for c in columns), f"{r['mean']:.2f}",
                    *(f"{r.get(e, float('nan')):.2f}" for e in extra), f"{r['ms_per_frame']:.3f}",
                    f"{r['x_source_forward']:.3f}", f"{r['peak_mem_mib']:.1f}", r["mem_kind"],
                    *(f"{s.get(k, float('nan')):.3f}" for k in stream_cols)])
    atomic_write_text(path, buf.getvalue())


def plot_runs(path: Path, stream: BenchStream, runs: list[MethodRun], title: str) -> Path:
    """Metric over the stream per method: ``plots.plot_stream`` (with the weather timeline) for the
    driving sequences; for the corruption stream the same style without a weather panel."""
    from ..plots import plot_stream

    series = {r.method: r.series_y for r in runs}
    first = runs[0]
    if stream.task == "seg" and first.series_weather and len(first.series_weather) == len(first.series_x) \
            and stream.setting != "mixed":
        return plot_stream(path, series, first.series_x, first.series_weather, first.series_domain,
                           ylabel="mIoU %", title=title, smooth=max(1, min(25, len(first.series_x) // 10)))
    return _plot_simple(path, series, first.series_x, first.series_domain,
                        "error % per batch" if stream.task == "cls" else "mIoU %", title, stream.x_label)


def _plot_simple(path: Path, series: dict[str, list[float]], xs: list[int], domains: list[str], ylabel: str,
                 title: str, xlabel: str) -> Path:
    from ..plots import _plt, _smooth

    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 3.8))
    xs_a = np.asarray(xs)
    k = max(1, min(5, len(xs) // 20))
    for name, ys in series.items():
        ax.plot(xs_a, _smooth(np.asarray(ys, float), k), label=name, lw=1.4)
    bounds = [0] + [i for i in range(1, len(domains)) if domains[i] != domains[i - 1]] + [len(domains)]
    if len(bounds) <= 40:  # shade domains (not for mixed streams)
        colors = plt.cm.Pastel2(np.linspace(0, 1, 8))
        for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            lo = xs_a[a - 1] if a else xs_a[0] - (xs_a[1] - xs_a[0] if len(xs_a) > 1 else 0)
            hi = xs_a[b - 1]
            ax.axvspan(lo, hi, color=colors[j % 8], alpha=0.35, lw=0)
            ax.text((lo + hi) / 2, 0.98, str(domains[a]).replace("_", "\n"), ha="center", va="top", fontsize=6,
                    transform=ax.get_xaxis_transform())
    ax.set_xlim(xs_a[0] - (xs_a[1] - xs_a[0] if len(xs_a) > 1 else 1), xs_a[-1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (f" (running mean of {k})" if k > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, ncol=min(len(series), 4))
    if title:
        ax.set_title(title)
    from ..plots import save_figure

    return save_figure(fig, path)
