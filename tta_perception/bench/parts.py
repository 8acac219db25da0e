"""The prediction split: a method whose prediction is the sum of two halves (DPLOT, RMT: student +
teacher logits) scored per half, from the same forward passes as its own prediction (the runner
reads ``method.last_parts`` after each step; no extra pass, the adaptation is untouched).

Table: one row per half and one for the sum (the method's own, scored prediction), the stream's
columns, the mean, and for 10 or more columns the mean of the first and of the last five."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .output import write_rows_csv
from .report import SHORT, _mean
from .runner import MethodRun, runs_of
from .streams import BenchStream


def _edges(cells: dict[str, float], columns: Sequence[str]) -> dict[str, float]:
    if len(columns) < 10:
        return {}
    return {"first5": _mean([cells[c] for c in columns[:5]]), "last5": _mean([cells[c] for c in columns[-5:]])}


def aggregate_parts(stream: BenchStream, runs: list[MethodRun], methods: list[str]) -> dict[str, Any]:
    """{method: {part: {"cells", "mean", "first5", "last5", "seeds"}}}, cells averaged over seeds."""
    out: dict[str, Any] = {}
    for m in methods:
        rs = [r for r in runs_of(runs, m, stream.name) if r.parts]
        if not rs:
            continue
        out[m] = {}
        for part in rs[0].parts:
            cells = {c: _mean([r.parts[part]["domains"].get(stream.column_domain[c], float("nan")) for r in rs])
                     for c in stream.columns}
            out[m][part] = {"cells": cells, "mean": _mean(list(cells.values())), **_edges(cells, stream.columns),
                            "seeds": [r.seed for r in rs]}
    return out


def _rows(parts: dict[str, Any], columns: Sequence[str], rows: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (method, half) plus the method's own prediction as its 'sum' row."""
    table = []
    for m, halves in parts.items():
        for part, v in halves.items():
            table.append({"method": m, "part": part, **v["cells"], "mean": v["mean"],
                          **{k: v[k] for k in ("first5", "last5") if k in v}})
        if m in rows:
            cells = rows[m]["cells"]
            table.append({"method": m, "part": "sum (its prediction)", **cells, "mean": rows[m]["mean"],
                          **_edges(cells, columns)})
    return table


def format_parts(parts: dict[str, Any], columns: Sequence[str], rows: dict[str, Any]) -> str:
    extra = ["first5", "last5"] if len(columns) >= 10 else []
    heads = [SHORT.get(c, c) for c in columns] + ["mean"] + extra
    w = max(6, *(len(h) for h in heads))
    lines = ["prediction split (the halves of the prediction scored alone, same forward passes): error % "
             "(seg: mIoU %)", f"{'method / part':<30} " + " ".join(f"{h:>{w}}" for h in heads)]
    for r in _rows(parts, columns, rows):
        label = f"{r['method']} {r['part']}"
        lines.append(f"{label:<30} " + " ".join(f"{r.get(c, float('nan')):>{w}.1f}"
                                                 for c in list(columns) + ["mean"] + extra))
    return "\n".join(lines)


def write_parts_csv(path: Path, parts: dict[str, Any], columns: Sequence[str], rows: dict[str, Any] | None = None) -> Path:
    extra = ["first5", "last5"] if len(columns) >= 10 else []
    return write_rows_csv(path, _rows(parts, columns, rows or {}), ["method", "part", *columns, "mean", *extra])
