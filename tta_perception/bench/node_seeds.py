"""Seeds of ``node-bench --cycles``: several runs (one ``node_bench.json`` per seed, ``--seed``) put
together as mean ± 95 % Student-t interval per method, phase and cycle, and domain memory's paired
difference to the same method without it (``NAME+dm`` − ``NAME`` on the same seeds):

    python -m tta_perception.bench.node_seeds runs/node_bench/dm_cycles runs/node_bench/dm_cycles_seed1 \\
        runs/node_bench/dm_cycles_seed2 --out runs/node_bench/dm_cycles_seeds

writes ``node_seeds.{txt,md,json,csv}`` (``bench/output.py``). A seed changes the world the frames
are rendered in; the node's timing is not seeded, so the runs also differ by the steps it managed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from ..metrics import paired_difference, t_interval
from .node import DOMAIN_MEMORY_SUFFIX
from .output import markdown_table, write_report


def load_runs(paths: Sequence[str | Path]) -> dict[int, dict[str, Any]]:
    """seed -> node_bench report, from files or the folders that hold ``node_bench.json``."""
    runs: dict[int, dict[str, Any]] = {}
    for p in map(Path, paths):
        f = p / "node_bench.json" if p.is_dir() else p
        report = json.loads(f.read_text())
        if not report.get("cycles"):
            raise ValueError(f"{f}: not a node-bench --cycles report")
        seed = int(report["settings"].get("seed", 0))
        if seed in runs:
            raise ValueError(f"{f}: seed {seed} given twice")
        runs[seed] = report
    if not runs:
        raise ValueError("no node-bench reports given")
    return dict(sorted(runs.items()))


def _cells(report: dict[str, Any], method: str) -> dict[str, float]:
    """'overall', 'p50_ms' and 'phase@cycle' of one method in one run."""
    r = report["methods"][method]
    return {"overall": float(r["miou"]), "p50_ms": float(r["latency_ms"]["p50"]), **{
        k: float(v) for k, v in r["miou_per_cycle"].items()}}


def summarise(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    methods = list(dict.fromkeys(m for rep in runs.values() for m in rep["methods"]))
    per: dict[str, dict[int, dict[str, float]]] = {
        m: {s: _cells(rep, m) for s, rep in runs.items() if m in rep["methods"]} for m in methods}
    keys = list(dict.fromkeys(k for m in methods for cells in per[m].values() for k in cells))
    table = {m: {k: t_interval([c[k] for c in per[m].values() if k in c]) for k in keys} for m in methods}
    pairs = {}
    for m in methods:
        base = m[:-len(DOMAIN_MEMORY_SUFFIX)] if m.endswith(DOMAIN_MEMORY_SUFFIX) else None
        if base not in per:
            continue
        seeds = sorted(set(per[m]) & set(per[base]))
        pairs[m] = {"versus": base, "seeds": seeds, "difference": {
            k: paired_difference([per[m][s][k] for s in seeds], [per[base][s][k] for s in seeds])
            for k in keys if all(k in per[m][s] and k in per[base][s] for s in seeds)}}
    return {"seeds": list(runs), "methods": methods, "keys": keys, "table": table, "pairs": pairs,
            "seeds_per_method": {m: sorted(per[m]) for m in methods}}


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"node-bench --cycles over seeds {s['seeds']}: mean ± 95 % CI (n = seeds the method ran)"]
    lines.append(f"{'cell':<16}" + "".join(f"{m:>22}" for m in s["methods"]))
    for k in s["keys"]:
        lines.append(f"{k:<16}" + "".join(f"{s['table'][m][k].format(1):>22}" for m in s["methods"]))
    for m, p in s["pairs"].items():
        lines.append(f"{m} - {p['versus']}, paired over seeds {p['seeds']} (* = interval excludes 0):")
        for k, iv in p["difference"].items():
            lines.append(f"  {k:<16} {iv.format(2):>16}{' *' if iv.significant else ''}")
    return "\n".join(lines)


def rows(s: dict[str, Any]) -> list[dict[str, Any]]:
    out = [{"cell": k, **{m: s["table"][m][k].format(1) for m in s["methods"]}} for k in s["keys"]]
    for m, p in s["pairs"].items():
        for k, iv in p["difference"].items():
            out[s["keys"].index(k)][f"{m} - {p['versus']}"] = iv.format(2) + (" *" if iv.significant else "")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("reports", nargs="+", help="node_bench.json files or the folders holding them, one per seed")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the first report's folder)")
    args = ap.parse_args(argv)
    try:
        runs = load_runs(args.reports)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}")
        return 2
    s = summarise(runs)
    text = format_summary(s)
    first = Path(args.reports[0])
    out = args.out or (first if first.is_dir() else first.parent)
    table = rows(s)
    columns = ["cell", *s["methods"], *(f"{m} - {p['versus']}" for m, p in s["pairs"].items())]
    payload = {**s, "table": {m: {k: iv.as_dict() for k, iv in v.items()} for m, v in s["table"].items()},
               "pairs": {m: {**p, "difference": {k: iv.as_dict() for k, iv in p["difference"].items()}}
                         for m, p in s["pairs"].items()}}
    files = write_report(Path(out), "node_seeds", text=text, payload=payload, rows=table,
                         markdown=markdown_table(table, columns))
    print(text)
    print("wrote " + ", ".join(files.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
