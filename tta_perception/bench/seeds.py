"""Seeds of a benchmark run: per method the mean over its seeds with a 95 % Student-t interval, and
DPLOT's paired difference to every other method run on the same seeds (a seed fixes the test order,
so the same seed is the same stream for every method).

Reads the ``results.json`` that ``tta-perception bench`` wrote (every run keeps its per-domain
numbers), so the intervals of a table can be recomputed by anyone from the file:

    python -m tta_perception.bench.seeds runs/bench/cls_continual_paper/results.json

and writes ``seeds.{txt,md,json,csv}`` beside it (``bench/output.py`` report format).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..metrics import paired_difference, t_interval
from .output import markdown_table, write_report


def _run_mean(domains: dict[str, float], columns: Sequence[str]) -> float:
    vals = [domains.get(c, domains.get(f"{c}@5")) for c in columns]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if len(vals) == len(columns) else float("nan")


def per_seed(results: dict[str, Any], stream: str) -> dict[str, dict[int, dict[str, float]]]:
    """{row: {seed: {"mean", "first5", "last5"}}}; rows are methods and '<method> <part>' halves."""
    columns = results["streams"][stream]["columns"]
    out: dict[str, dict[int, dict[str, float]]] = {}

    def add(row: str, seed: int, domains: dict[str, float]) -> None:
        d = {"mean": _run_mean(domains, columns)}
        if len(columns) >= 10:
            d["first5"] = _run_mean(domains, columns[:5])
            d["last5"] = _run_mean(domains, columns[-5:])
        out.setdefault(row, {})[int(seed)] = d

    for r in results["runs"]:
        if r["stream"] != stream:
            continue
        add(r["method"], r["seed"], r["domains"])
        for part, v in (r.get("parts") or {}).items():
            add(f"{r['method']} {part}", r["seed"], v["domains"])
    return out


def seed_table(results: dict[str, Any], stream: str, level: float = 0.95,
               reference: str = "dplot") -> dict[str, Any]:
    """Rows with mean ± half width per statistic, and the paired differences ``reference - method``."""
    data = per_seed(results, stream)
    rows = []
    for name, seeds in data.items():
        row: dict[str, Any] = {"row": name, "seeds": ",".join(map(str, sorted(seeds))), "n": len(seeds)}
        for stat in next(iter(seeds.values())):
            iv = t_interval([seeds[s][stat] for s in sorted(seeds)], level)
            row[stat], row[f"{stat}_ci"] = iv.mean, iv.half_width
        rows.append(row)
    diffs = []
    ref = data.get(reference, {})
    for name, seeds in data.items():
        common = sorted(set(ref) & set(seeds))
        if name == reference or " " in name or len(common) < 2:
            continue
        iv = paired_difference([ref[s]["mean"] for s in common], [seeds[s]["mean"] for s in common], level)
        m, h = iv.mean, iv.half_width
        diffs.append({"pair": f"{reference} - {name}", "seeds": ",".join(map(str, common)), "n": len(common),
                      "mean_diff": m, "ci": h, "lo": m - h, "hi": m + h,
                      "reading": ("interval excludes 0" if (m - h) * (m + h) > 0 else "interval includes 0")})
    return {"stream": stream, "level": level, "rows": rows, "paired": diffs}


def _pm(m: float, h: float) -> str:
    if math.isnan(m):
        return "–"
    return f"{m:.1f}" if math.isnan(h) else f"{m:.1f} ± {h:.1f}"


def format_seed_table(t: dict[str, Any]) -> str:
    pct = int(round(100 * t["level"]))
    stats = [s for s in ("mean", "first5", "last5") if any(s in r for r in t["rows"])]
    md_rows = [{"row": r["row"], "seeds": r["seeds"], **{s: _pm(r[s], r[f"{s}_ci"]) for s in stats}} for r in t["rows"]]
    lines = [f"{t['stream']}: mean over seeds ± {pct} % t-interval (error % for classification)",
             markdown_table(md_rows, ["row", "seeds", *stats], ["method", "seeds", *stats])]
    if t["paired"]:
        lines += ["", f"paired differences over the same seeds (mean ± {pct} % t-interval; negative: "
                      f"{t['paired'][0]['pair'].split(' - ')[0]} has less error)",
                  markdown_table([{"pair": d["pair"], "seeds": d["seeds"], "diff": _pm(d["mean_diff"], d["ci"]),
                                   "reading": d["reading"]} for d in t["paired"]],
                                 ["pair", "seeds", "diff", "reading"])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="mean ± t-interval over a benchmark's seeds, from its results.json")
    p.add_argument("results", type=Path)
    p.add_argument("--level", type=float, default=0.95)
    p.add_argument("--out", type=Path, default=None, help="folder for seeds.* (default: beside results.json)")
    args = p.parse_args(argv)
    res = json.loads(args.results.read_text())
    tables = [seed_table(res, st, args.level) for st in res["streams"]]
    text = "\n\n".join(format_seed_table(t) for t in tables)
    print(text)
    flat = [{"stream": t["stream"], **r} for t in tables for r in t["rows"]]
    write_report(args.out or args.results.parent, "seeds", text=text, payload={"source": str(args.results),
                 "tables": tables}, rows=flat, markdown=text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
