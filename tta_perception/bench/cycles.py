"""Domain memory's evidence: the same weather phase in each cycle of a looping sequence (``dynamic``
runs its cycle twice; ``--cycles N`` more), per method, as mean ± 95 % CI over the seeds, the gain of
the later cycle over the first per phase, and — for the ``+dm`` variants — how the label-free
detector's domains match the true phases (``metrics.detector_purity``). Scoring is in
``metrics``; this module arranges the runs into text, CSV and JSON."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..metrics import detector_purity, t_interval
from .output import write_rows_csv
from .runner import MethodRun, runs_of
from .streams import BenchStream

CONFIDENCE = 0.95


def _fmt(iv) -> str:
    return iv.format(1)


def cycle_rows(stream: BenchStream, runs: Sequence[MethodRun], methods: Sequence[str]) -> dict[str, Any]:
    """Per method: phase -> cycle -> interval over seeds; the gain of each later cycle over the first."""
    out: dict[str, Any] = {}
    for m in methods:
        rs = [r for r in runs_of(runs, m, stream.name) if r.domains_by_cycle]
        if not rs:
            continue
        keys = list(dict.fromkeys(k for r in rs for k in r.domains_by_cycle))
        phases = list(dict.fromkeys(k.rsplit("@", 1)[0] for k in keys))
        cycles = sorted({int(k.rsplit("@", 1)[1]) for k in keys})
        cells, gains = {}, {}
        for p in phases:
            cells[p] = {c: t_interval([r.domains_by_cycle.get(f"{p}@{c}", float("nan")) for r in rs], CONFIDENCE)
                        for c in cycles}
            for c in cycles[1:]:
                diffs = [r.domains_by_cycle.get(f"{p}@{c}", float("nan")) - r.domains_by_cycle.get(f"{p}@1", float("nan"))
                         for r in rs]
                gains.setdefault(p, {})[c] = t_interval(diffs, CONFIDENCE)
        purity = None
        if any(r.series_detected for r in rs):
            purity = {k: t_interval([detector_purity(r.series_domain, r.series_detected)[k] for r in rs
                                     if r.series_detected], CONFIDENCE) for k in ("one_to_one", "purity", "inverse")}
        out[m] = {"phases": phases, "cycles": cycles, "cells": cells, "gains": gains, "purity": purity,
                  "seeds": [r.seed for r in rs]}
    return out


def format_cycles(rows: dict[str, Any], name: str) -> str:
    if not rows:
        return ""
    any_row = next(iter(rows.values()))
    phases, cycles = any_row["phases"], any_row["cycles"]
    lines = [f"{name}: mIoU per phase and weather cycle (mean ± 95 % CI over seeds {any_row['seeds']}); "
             f"gain = cycle {cycles[-1]} - cycle 1"]
    head = f"{'method':<12}" + "".join(f"{p[:10]:>28}" for p in phases)
    lines.append(head)
    for m, r in rows.items():
        cells = []
        for p in phases:
            per = " / ".join(_fmt(r["cells"][p][c]) for c in cycles)
            gain = r["gains"].get(p, {}).get(cycles[-1]) if len(cycles) > 1 else None
            cells.append(per + (f" ({gain.mean:+.1f})" if gain is not None and gain.n else ""))
        lines.append(f"{m:<12}" + "".join(f"{c:>28}" for c in cells))
    for m, r in rows.items():
        if r["purity"]:
            pu = r["purity"]
            lines.append(f"{m}: detector purity one-to-one {_fmt(pu['one_to_one'])}, majority "
                         f"{_fmt(pu['purity'])}, phases kept whole {_fmt(pu['inverse'])} (fractions of frames)")
    return "\n".join(lines)


def cycles_report(streams: Sequence[BenchStream], runs: Sequence[MethodRun], methods: Sequence[str],
                  out: str | Path) -> tuple[list[str], dict[str, Any]]:
    text, payload = [], {}
    for st in streams:
        rows = cycle_rows(st, runs, methods)
        if not rows or len(next(iter(rows.values()))["cycles"]) < 2:
            continue
        csv_rows = []
        for m, r in rows.items():
            for p in r["phases"]:
                for c in r["cycles"]:
                    iv = r["cells"][p][c]
                    g = r["gains"].get(p, {}).get(c)
                    csv_rows.append({"method": m, "phase": p, "cycle": c, "miou": iv.mean, "ci95": iv.half_width,
                                     "seeds": iv.n, "gain_vs_cycle1": g.mean if g else None,
                                     "gain_ci95": g.half_width if g else None})
        safe = st.name.replace("/", "_")
        write_rows_csv(Path(out) / f"cycles_{safe}.csv", csv_rows)
        text.append(format_cycles(rows, st.name))
        payload[st.name] = {m: {"cells": {p: {str(c): iv.as_dict() for c, iv in cc.items()} for p, cc in r["cells"].items()},
                                "gains": {p: {str(c): iv.as_dict() for c, iv in gg.items()} for p, gg in r["gains"].items()},
                                "purity": {k: iv.as_dict() for k, iv in r["purity"].items()} if r["purity"] else None}
                            for m, r in rows.items()}
        payload[st.name]["csv"] = str(Path(out) / f"cycles_{safe}.csv")
    return text, payload
