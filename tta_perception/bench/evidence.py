"""What the benchmark reports beyond the per-seed means: 95 % intervals over seeds for every cell, a
paired comparison of DPLOT with the best prior method, and the time to recover after each instant
weather change. All scoring lives in ``metrics`` (``t_interval``, ``paired_difference``,
``time_to_recover``); this module only arranges the runs into tables, text, CSV and JSON.

- Intervals: Student-t, n-1 degrees of freedom, over the runs of the seeds given (``--seeds``); a
  cell's interval is that of the per-seed values of the cell (per domain, the mean over the columns,
  ``seq``: the mIoU over the whole sequence).
- Paired comparison: DPLOT minus the best prior method (by the mean over seeds of the stream's key
  column: ``seq`` for segmentation, ``mean`` for classification), per seed, then the interval of
  those differences. Significant when it excludes 0. Picking the best on the same runs favours the
  baseline slightly, so a significant DPLOT win is, if anything, understated.
- Time to recover: :func:`metrics.time_to_recover` on each run's per-frame series, then the interval
  over the seeds that recovered before the phase ended (how many did is reported).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from ..metrics import Interval, paired_difference, t_interval, time_to_recover
from ..metrics.recovery import RECOVERY_FRACTION, RECOVERY_WINDOW
from .output import write_rows_csv
from .report import SHORT
from .runner import MethodRun, runs_of
from .streams import BenchStream
from .variants import VARIANTS

CONFIDENCE = 0.95


def _by_seed(runs: Sequence[MethodRun], method: str, stream: str) -> dict[int, MethodRun]:
    return {r.seed: r for r in runs_of(runs, method, stream)}


def _cell_values(stream: BenchStream, run: MethodRun, task: str) -> dict[str, float]:
    """One run's value of every table cell: the columns, their mean, and (seg) the whole sequence."""
    vals = {c: run.domains.get(stream.column_domain[c], float("nan")) for c in stream.columns}
    present = [v for v in vals.values() if not math.isnan(v)]
    vals["mean"] = sum(present) / len(present) if present else float("nan")
    if task == "seg":
        vals["seq"] = run.overall
    return vals


def seed_intervals(stream: BenchStream, runs: Sequence[MethodRun], methods: Sequence[str],
                   task: str) -> dict[str, dict[str, Any]]:
    """Per method: ``{"seeds": [...], "cells": {cell: Interval}, "values": {cell: [per seed]}}``."""
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        rs = _by_seed(runs, m, stream.name)
        if not rs:
            continue
        seeds = sorted(rs)
        per = [_cell_values(stream, rs[s], task) for s in seeds]
        cells = list(per[0])
        values = {c: [p[c] for p in per] for c in cells}
        out[m] = {"seeds": seeds, "values": values,
                  "cells": {c: t_interval(values[c], CONFIDENCE) for c in cells}}
    return out


def summary_intervals(per_stream: dict[str, dict[str, dict[str, Any]]], key: str) -> dict[str, dict[str, Any]]:
    """Across streams: per method, the interval over seeds of the per-seed mean of each stream's
    ``key`` cell (a seed counts only where it ran on every stream)."""
    out: dict[str, dict[str, Any]] = {}
    names = list(per_stream)
    methods = list(dict.fromkeys(m for rows in per_stream.values() for m in rows))
    for m in methods:
        if not all(m in per_stream[s] for s in names):
            continue
        seeds = sorted(set.intersection(*(set(per_stream[s][m]["seeds"]) for s in names)))
        cols = {s: [per_stream[s][m]["values"][key][per_stream[s][m]["seeds"].index(sd)] for sd in seeds]
                for s in names}
        mean = [sum(cols[s][i] for s in names) / len(names) for i in range(len(seeds))]
        values = {**cols, "mean": mean}
        out[m] = {"seeds": seeds, "values": values, "cells": {c: t_interval(v, CONFIDENCE) for c, v in values.items()}}
    return out


def paired_vs_best(rows: dict[str, dict[str, Any]], key: str, task: str) -> dict[str, Any] | None:
    """DPLOT minus the best prior method on cell ``key``, paired by seed (None without both)."""
    if "dplot" not in rows:
        return None
    better = (lambda a, b: a < b) if task == "cls" else (lambda a, b: a > b)
    priors = {m: r for m, r in rows.items() if m in VARIANTS and VARIANTS[m].prior
              and not math.isnan(r["cells"][key].mean)}
    if not priors:
        return None
    best = None
    for m, r in priors.items():
        if best is None or better(r["cells"][key].mean, priors[best]["cells"][key].mean):
            best = m
    d, b = rows["dplot"], priors[best]
    seeds = [s for s in d["seeds"] if s in b["seeds"]]
    dv = [d["values"][key][d["seeds"].index(s)] for s in seeds]
    bv = [b["values"][key][b["seeds"].index(s)] for s in seeds]
    diff = paired_difference(dv, bv, CONFIDENCE)
    wins = sum(better(x, y) for x, y in zip(dv, bv))
    dplot_better = diff.mean < 0 if task == "cls" else diff.mean > 0
    return {"best_prior": best, "column": key, "seeds": seeds, "dplot": d["cells"][key], "best": b["cells"][key],
            "difference": diff, "significant": diff.significant, "dplot_better": bool(dplot_better),
            "dplot_wins_seeds": int(wins), "metric": "error %" if task == "cls" else "mIoU %"}


def format_paired(p: dict[str, Any] | None, name: str) -> str:
    if p is None:
        return f"paired comparison on {name}: needs dplot and a prior method"
    d = p["difference"]
    if d.n < 2:
        return (f"paired comparison on {name}: DPLOT - {p['best_prior']} = {d.mean:+.2f} ({p['metric']}, one seed: "
                "no interval; run --seeds 0,1,2,3,4)")
    verdict = ("significant" if p["significant"] else "not significant") + f" at {int(CONFIDENCE * 100)} %"
    who = "DPLOT better" if p["dplot_better"] else f"{p['best_prior']} better"
    return (f"paired comparison on {name} ({p['column']}, {p['metric']}): DPLOT {p['dplot'].format(2)} vs best prior "
            f"{p['best_prior']} {p['best'].format(2)}; DPLOT - {p['best_prior']} = {d.format(2)} "
            f"[{d.low:+.2f}, {d.high:+.2f}] over {d.n} seeds ({who} on average; DPLOT better on "
            f"{p['dplot_wins_seeds']}/{d.n} seeds): {verdict}")


def format_ci_table(rows: dict[str, dict[str, Any]], cells: Sequence[str], title: str, digits: int = 1) -> str:
    """Methods x cells, each ``mean ± half-width`` of the 95 % interval."""
    heads = [SHORT.get(c, c) for c in cells]
    body = {m: [r["cells"][c].format(digits) if c in r["cells"] else "–" for c in cells] for m, r in rows.items()}
    w = max([6] + [len(h) for h in heads] + [len(v) for vs in body.values() for v in vs])
    mw = max([8] + [len(m) for m in rows])
    lines = [title, f"{'method':<{mw}} " + " ".join(f"{h:>{w}}" for h in heads)]
    lines += [f"{m:<{mw}} " + " ".join(f"{v:>{w}}" for v in vs) for m, vs in body.items()]
    return "\n".join(lines)


def ci_csv_rows(rows: dict[str, dict[str, Any]], stream: str) -> list[dict[str, Any]]:
    """Long format: one row per method and cell, with the interval and the per-seed values."""
    out = []
    for m, r in rows.items():
        for c, iv in r["cells"].items():
            out.append({"stream": stream, "method": m, "cell": c, "mean": iv.mean, "ci95_half_width": iv.half_width,
                        "ci95_low": iv.low, "ci95_high": iv.high, "std": iv.std, "n_seeds": iv.n,
                        "seeds": " ".join(map(str, r["seeds"])),
                        "values": " ".join(f"{v:.4f}" for v in r["values"][c])})
    return out


def paired_csv_row(p: dict[str, Any] | None, stream: str) -> list[dict[str, Any]]:
    if p is None:
        return []
    d = p["difference"]
    return [{"stream": stream, "column": p["column"], "best_prior": p["best_prior"], "dplot_mean": p["dplot"].mean,
             "best_mean": p["best"].mean, "difference": d.mean, "ci95_low": d.low, "ci95_high": d.high,
             "n_seeds": d.n, "significant": p["significant"], "dplot_better": p["dplot_better"],
             "dplot_wins_seeds": p["dplot_wins_seeds"]}]


def jsonable_rows(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {m: {"seeds": r["seeds"], "values": r["values"], "cells": {c: iv.as_dict() for c, iv in r["cells"].items()}}
            for m, r in rows.items()}


def jsonable_paired(p: dict[str, Any] | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {**{k: v for k, v in p.items() if not isinstance(v, Interval)},
            **{k: v.as_dict() for k, v in p.items() if isinstance(v, Interval)}}


# ------------------------------------------------------------------------------------ recovery
def recovery_rows(stream: BenchStream, runs: Sequence[MethodRun], methods: Sequence[str],
                  window: int = RECOVERY_WINDOW, fraction: float = RECOVERY_FRACTION) -> dict[str, Any]:
    """Time to recover after every domain change of ``stream``, per method: per seed and the
    interval over the seeds that recovered."""
    instant = {c["frame"]: c["instant"] for c in stream.info.get("domain_changes", [])}
    changes: list[dict[str, Any]] = []
    per_method: dict[str, Any] = {}
    for m in methods:
        rs = _by_seed(runs, m, stream.name)
        if not rs:
            continue
        by_change: dict[int, list[Any]] = {}
        for s in sorted(rs):
            r = rs[s]
            for rec in time_to_recover(zip(r.series_x, r.series_domain, r.series_y), window=window, fraction=fraction):
                by_change.setdefault(rec.frame, []).append((s, rec))
                if not any(c["frame"] == rec.frame for c in changes):
                    changes.append({"frame": rec.frame, "previous": rec.previous, "domain": rec.domain,
                                    "label": rec.label, "instant": bool(instant.get(rec.frame, False))})
        per_method[m] = {}
        for frame, recs in by_change.items():
            frames = [rec.frames for _, rec in recs]
            done = [f for f in frames if f is not None]
            per_method[m][frame] = {"seeds": [s for s, _ in recs], "frames": frames,
                                    "recovered": len(done), "n": len(frames),
                                    "interval": t_interval(done, CONFIDENCE),
                                    "plateau": t_interval([rec.plateau for _, rec in recs], CONFIDENCE),
                                    "start_score": t_interval([rec.start_score for _, rec in recs], CONFIDENCE)}
    changes.sort(key=lambda c: c["frame"])
    return {"window": window, "fraction": fraction, "changes": changes, "methods": per_method,
            "all_instant": bool(changes) and all(c["instant"] for c in changes),
            "any_instant": any(c["instant"] for c in changes)}


def _rec_cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "–"
    iv = cell["interval"]
    text = "–" if iv.n == 0 else (f"{iv.mean:.0f}" if iv.n < 2 else f"{iv.mean:.0f}±{iv.half_width:.0f}")
    return text if cell["recovered"] == cell["n"] else f"{text} ({cell['recovered']}/{cell['n']})"


def recovery_mean(rec: dict[str, Any], method: str, instant_only: bool = True) -> Interval:
    """Per seed, the mean time to recover over the (instant) changes where it recovered; then the
    interval over seeds."""
    cells = rec["methods"].get(method, {})
    frames = [c["frame"] for c in rec["changes"] if c["instant"] or not instant_only]
    seeds = sorted({s for f in frames if f in cells for s in cells[f]["seeds"]})
    per_seed = []
    for s in seeds:
        vals = [cells[f]["frames"][cells[f]["seeds"].index(s)] for f in frames
                if f in cells and s in cells[f]["seeds"]]
        vals = [v for v in vals if v is not None]
        if vals:
            per_seed.append(sum(vals) / len(vals))
    return t_interval(per_seed, CONFIDENCE)


def format_recovery(rec: dict[str, Any], name: str, fps: float | None) -> str:
    """Changes as rows, methods as columns: frames to recover (mean ± CI over seeds)."""
    methods = list(rec["methods"])
    changes = [c for c in rec["changes"] if c["instant"]] or rec["changes"]
    heads = [f"{c['previous']}→{c['domain']} @{c['frame']}" for c in changes]
    body = {m: [_rec_cell(rec["methods"][m].get(c["frame"])) for c in changes] for m in methods}
    means = {m: recovery_mean(rec, m, instant_only=any(c["instant"] for c in changes)) for m in methods}
    w = max([8] + [len(m) for m in methods] + [len(v) for vs in body.values() for v in vs])
    hw = max(len(h) for h in heads) if heads else 10
    note = "" if rec["all_instant"] else (" (only the instant switches)" if rec["any_instant"] else
                                          " (no instant switch: the weather ramps, so this is not well defined)")
    per = f", {1000.0 / fps:.0f} ms each" if fps else ""
    lines = [f"{name}: frames to recover after each weather change{note}{per}: until the trailing mean of "
             f"{rec['window']} frames stays >= {rec['fraction']:.0%} of the phase's plateau (mean of its last half); "
             "mean ± 95 % CI over seeds, (k/n) = seeds that recovered before the phase ended",
             f"{'change':<{hw}} " + " ".join(f"{m:>{w}}" for m in methods)]
    for i, h in enumerate(heads):
        lines.append(f"{h:<{hw}} " + " ".join(f"{body[m][i]:>{w}}" for m in methods))
    lines.append(f"{'mean':<{hw}} " + " ".join(f"{means[m].format(1) if means[m].n else '–':>{w}}" for m in methods))
    return "\n".join(lines)


def recovery_csv_rows(rec: dict[str, Any], stream: str) -> list[dict[str, Any]]:
    out = []
    for m, cells in rec["methods"].items():
        for c in rec["changes"]:
            cell = cells.get(c["frame"])
            if cell is None:
                continue
            iv = cell["interval"]
            out.append({"stream": stream, "method": m, "change_frame": c["frame"], "previous": c["previous"],
                        "domain": c["domain"], "instant": c["instant"], "frames_mean": iv.mean,
                        "ci95_half_width": iv.half_width, "recovered": cell["recovered"], "n_seeds": cell["n"],
                        "per_seed": " ".join("none" if f is None else str(f) for f in cell["frames"]),
                        "plateau_mean": cell["plateau"].mean, "start_score_mean": cell["start_score"].mean})
    return out


def jsonable_recovery(rec: dict[str, Any]) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, Interval):
            return v.as_dict()
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v
    return conv(rec)


# ------------------------------------------------------------------------------------ suite hook
def evidence_report(streams: Sequence[BenchStream], runs: Sequence[MethodRun], methods: Sequence[str], task: str,
                    out: Path, streaming: bool) -> tuple[list[str], dict[str, Any]]:
    """Intervals over seeds, paired comparisons and (streaming segmentation) time to recover for
    every stream and the summary: the text blocks to print and the JSON part; writes
    ``ci_<stream>.csv``, ``ci_summary.csv``, ``paired.csv`` and ``recovery_<stream>.csv``."""
    key = "seq" if task == "seg" else "mean"
    n_seeds = len({r.seed for r in runs})
    text: list[str] = []
    payload: dict[str, Any] = {"confidence": CONFIDENCE, "interval": "Student t, n-1 degrees of freedom, over seeds",
                               "streams": {}}
    per_stream: dict[str, dict[str, Any]] = {}
    paired_rows: list[dict[str, Any]] = []
    for st in streams:
        rows = seed_intervals(st, runs, methods, task)
        per_stream[st.name] = rows
        paired = paired_vs_best(rows, key, task)
        safe = st.name.replace("/", "_")
        write_rows_csv(Path(out) / f"ci_{safe}.csv", ci_csv_rows(rows, st.name))
        paired_rows += paired_csv_row(paired, st.name)
        entry: dict[str, Any] = {"rows": jsonable_rows(rows), "paired_vs_best": jsonable_paired(paired),
                                 "csv": str(Path(out) / f"ci_{safe}.csv")}
        block = []
        if n_seeds > 1:
            cells = list(st.columns) + ["mean"] + (["seq"] if task == "seg" else [])
            block.append(format_ci_table(rows, cells, f"{st.name} over {n_seeds} seeds: mean ± 95 % CI "
                                         "(Student t, n-1 dof)"))
        block.append(format_paired(paired, st.name))
        if streaming and task == "seg" and st.setting != "mixed":
            rec = recovery_rows(st, runs, methods)
            entry["recovery"] = jsonable_recovery(rec)
            if rec["any_instant"]:
                write_rows_csv(Path(out) / f"recovery_{safe}.csv", recovery_csv_rows(rec, st.name))
                entry["recovery_csv"] = str(Path(out) / f"recovery_{safe}.csv")
                block.append(format_recovery(rec, st.name, st.info.get("fps")))
        text.append("\n".join(block))
        payload["streams"][st.name] = entry
    if len(streams) > 1:
        rows = summary_intervals(per_stream, key)
        paired = paired_vs_best(rows, "mean", task)
        write_rows_csv(Path(out) / "ci_summary.csv", ci_csv_rows(rows, "summary"))
        paired_rows += paired_csv_row(paired, "summary")
        block = []
        if n_seeds > 1:
            block.append(format_ci_table(rows, [st.name for st in streams] + ["mean"],
                                         f"summary over {n_seeds} seeds ({key} of each stream): mean ± 95 % CI"))
        block.append(format_paired(paired, "the mean over the streams"))
        text.append("\n".join(block))
        payload["summary"] = {"rows": jsonable_rows(rows), "paired_vs_best": jsonable_paired(paired),
                              "csv": str(Path(out) / "ci_summary.csv")}
    if paired_rows:
        write_rows_csv(Path(out) / "paired.csv", paired_rows)
        payload["paired_csv"] = str(Path(out) / "paired.csv")
    return text, payload
