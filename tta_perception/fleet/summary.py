"""The fleet's report, from the per-bag records: one table per bag, per weather tag and overall (per
method), the paired comparison of methods across bags, timings, and the plots.

- Pooling: a weather tag's and the overall mIoU come from the bags' confusion matrices summed (the
  benchmark's formula: the mIoU of all the pixels, not a mean of the bags' mIoU), label flicker from
  the changed and counted pixels summed.
- Paired comparison (``--methods A,B,...``): every method against the first one named, per bag (the
  bag's overall mIoU, its mIoU in each weather tag, and its label flicker), over the bags where both
  ran and were scored; the mean difference with its 95 % Student-t interval (``metrics.paired_difference``,
  as ``bench`` reports seeds) and how many bags the method won.
- Quality: each bag's mean label-free quality estimate (estimated pixel accuracy of the outputs) and
  its frames per level OK / WARN / ERROR (the replay's ``quality``), and over the bags per method (the
  frame-weighted mean, the frames summed).
- Timing: a run's wall time from submission to result (``wall_s``), the task's own time
  (``task_s``) and the replay's inside it (``replay_s``); the difference ``wall_s - task_s`` is the
  engine's overhead per bag (scheduling, a fresh worker's imports, moving the record).

``python -m tta_perception.fleet.summary OUT [OUT ...] --scaling PNG`` plots throughput against the
number of parallel bags of several runs over the same bags (the scaling figure).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..metrics import ConfusionMatrix, paired_difference

CONFIDENCE = 0.95


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _pool(records: Sequence[dict[str, Any]], tag: Optional[str]) -> dict[str, Any]:
    """mIoU, accuracy, flicker and frames of the records' phase ``tag`` (None: every phase) pooled."""
    cm: Optional[ConfusionMatrix] = None
    changed = counted = frames = bags = 0
    for r in records:
        phases = [p for p in (r.get("confusion") or {}) if tag is None or p == tag]
        if not phases:
            continue
        bags += 1
        for p in phases:
            mat = np.asarray(r["confusion"][p], np.int64)
            if cm is None:
                cm = ConfusionMatrix(mat.shape[0])
            cm.mat += mat
            frames += int(r["table"].get(p, {}).get("frames", 0))
            ch, n = (r.get("flicker_pixels") or {}).get(p, (0, 0))
            changed, counted = changed + int(ch), counted + int(n)
    if cm is None:
        return {"miou": float("nan"), "acc": float("nan"), "flicker": float("nan"), "frames": 0, "bags": 0}
    return {"miou": 100.0 * cm.miou(), "acc": 100.0 * cm.accuracy(),
            "flicker": 100.0 * changed / counted if counted else float("nan"), "frames": frames, "bags": bags}


LEVELS = ("OK", "WARN", "ERROR")  # runtime.quality.LEVELS


def _quality_cells(rec: dict[str, Any]) -> dict[str, Any]:
    """A bag's quality estimate (``task._quality``): its mean and the frames per level (NaN / None
    when the replay had ``quality`` off or failed)."""
    q = rec.get("quality") or {}
    levels = q.get("levels") or {}
    return {"quality": _nan(q.get("mean_estimate")),
            **{f"quality_{k.lower()}": (int(levels[k]) if k in levels else None) for k in LEVELS}}


def _quality_pool(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The quality over the bags: the frame-weighted mean estimate and the frames per level."""
    cells = [(r.get("quality") or {}) for r in records]
    cells = [q for q in cells if q.get("frames")]
    if not cells:
        return {"quality": float("nan"), **{f"quality_{k.lower()}": None for k in LEVELS}}
    weighted = [(float(q["mean_estimate"]), int(q["frames"])) for q in cells if q.get("mean_estimate") is not None]
    frames = sum(n for _, n in weighted)
    return {"quality": sum(v * n for v, n in weighted) / frames if frames else float("nan"),
            **{f"quality_{k.lower()}": sum(int((q.get("levels") or {}).get(k, 0)) for q in cells) for k in LEVELS}}


def _bag_value(rec: Optional[dict[str, Any]], metric: str, cell: str) -> float:
    if not rec or rec.get("status") != "ok":
        return float("nan")
    return _nan((rec.get("table") or {}).get(cell, {}).get(metric))


def paired(records: Sequence[dict[str, Any]], methods: Sequence[str], tags: Sequence[str]) -> list[dict[str, Any]]:
    """Each method after the first against the first, per bag (module docstring)."""
    if len(methods) < 2:
        return []
    by = {(r["name"], r["method"]): r for r in records}
    names = list(dict.fromkeys(r["name"] for r in records))
    ref = methods[0]
    out = []
    for m in methods[1:]:
        for metric, cells in (("miou", ["all", *tags]), ("flicker", ["all"])):
            for cell in cells:
                a = [_bag_value(by.get((n, m)), metric, cell) for n in names]
                b = [_bag_value(by.get((n, ref)), metric, cell) for n in names]
                pairs = [(x, y) for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
                if not pairs:
                    continue
                d = paired_difference([x for x, _ in pairs], [y for _, y in pairs], CONFIDENCE)
                better = (lambda x, y: x < y) if metric == "flicker" else (lambda x, y: x > y)
                out.append({"method": m, "reference": ref, "metric": metric, "cell": cell, "bags": d.n,
                            "difference": d.mean, "ci95_low": d.low, "ci95_high": d.high,
                            "ci95_half_width": d.half_width, "significant": d.significant,
                            "wins": sum(better(x, y) for x, y in pairs)})
    return out


def _timing(now: Sequence[dict[str, Any]], wall_s: float, ran: int) -> dict[str, Any]:
    """Times of the runs of this invocation (``now``)."""
    ok = [r for r in now if r.get("status") == "ok"]

    def stat(key: str, rows: Sequence[dict[str, Any]], fn=lambda v: sum(v) / len(v)) -> Optional[float]:
        vals = [float(r[key]) for r in rows if r.get(key) is not None]
        return fn(vals) if vals else None

    frames = sum(int(r.get("frames") or 0) for r in ok)
    return {"wall_s": wall_s, "runs": ran, "frames": frames,
            "frames_per_s": frames / wall_s if wall_s > 0 and frames else None,
            "bags_per_s": len(now) / wall_s if wall_s > 0 and now else None,
            "task_s_mean": stat("task_s", ok), "replay_s_mean": stat("replay_s", ok),
            "score_s_mean": stat("score_s", ok), "setup_s_max": stat("setup_s", ok, max),
            "cpu_per_wall": (sum(float(r.get("cpu_s") or 0) for r in ok) / sum(float(r["task_s"]) for r in ok)
                             if ok and all(r.get("task_s") for r in ok) else None),
            "cores_used": (sum(float(r.get("cpu_s") or 0) for r in ok) / wall_s
                           if ok and wall_s > 0 and all(r.get("cpu_s") is not None for r in ok) else None),
            "overhead_s_mean": stat("overhead_s", ok),
            "overhead_s_max": stat("overhead_s", ok, max), "peak_rss_mb_max": stat("peak_rss_mb", ok, max),
            "peak_rss_mb_mean": stat("peak_rss_mb", ok)}


def build(records: Sequence[dict[str, Any]], methods: Sequence[str], *, wall_s: float, ran: int,
          cluster: dict[str, Any], settings: dict[str, Any],
          now: Optional[Sequence[dict[str, Any]]] = None) -> dict[str, Any]:
    """The summary of a run's records (all of them: this run's and, resumed, the earlier ones');
    ``now``: the records of this invocation (the timings; default all)."""
    tags = list(dict.fromkeys(t for r in records for t in (r.get("tags") or [])))
    current = {id(r) for r in (records if now is None else now)}
    rows = []
    for r in records:
        cell = (r.get("table") or {}).get("all", {})
        rows.append({"bag": r["name"], "method": r["method"], "status": r.get("status"),
                     "tags": " ".join(r.get("tags") or []), "frames": r.get("frames"),
                     "miou": _nan(cell.get("miou")), "acc": _nan(cell.get("acc")),
                     "flicker": _nan(cell.get("flicker")),
                     **{f"miou_{t}": _bag_value(r, "miou", t) for t in tags},
                     "adapt_steps": (r.get("counters") or {}).get("adapt_steps"),
                     **_quality_cells(r),
                     "wall_s": r.get("wall_s"), "task_s": r.get("task_s"), "replay_s": r.get("replay_s"),
                     "cpu_s": r.get("cpu_s"),
                     "overhead_s": r.get("overhead_s"), "peak_rss_mb": r.get("peak_rss_mb"),
                     "submitted_s": r.get("submitted_s"), "worker": f"{r.get('host', '?')}:{r.get('pid', '?')}",
                     "now": id(r) in current, "retried": len(r.get("workers") or []) > 1,
                     "reason": r.get("reason") or "",
                     "path": r.get("bag")})
    ok = {m: [r for r in records if r["method"] == m and r.get("status") == "ok"] for m in methods}
    per_tag = {m: {t: _pool(ok[m], t) for t in tags} for m in methods}
    overall = {m: {**_pool(ok[m], None), **_quality_pool(ok[m]), "ok": len(ok[m]),
                   "failed": sum(1 for r in records if r["method"] == m and r.get("status") != "ok")}
               for m in methods}
    return {"methods": list(methods), "tags": tags, "bags": len({r["name"] for r in records}), "rows": rows,
            "per_tag": per_tag, "overall": overall, "paired": paired(records, methods, tags),
            "failed": [{"bag": r["name"], "method": r["method"], "reason": r.get("reason", "")}
                       for r in records if r.get("status") != "ok"],
            "timing": _timing(records if now is None else now, wall_s, ran), "cluster": cluster, "settings": settings,
            "confidence": CONFIDENCE}


# ------------------------------------------------------------------------------------------ text
def _f(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _grid(head: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [fmt(head)] + [fmt(row) for row in body]


def format_summary(s: dict[str, Any]) -> str:
    methods, tags = s["methods"], s["tags"]
    by = {(r["bag"], r["method"]): r for r in s["rows"]}
    names = list(dict.fromkeys(r["bag"] for r in s["rows"]))
    out = ["per bag: mIoU % over the bag (label flicker %; lower = steadier)"]
    body = []
    for n in names:
        first = next(by[(n, m)] for m in methods if (n, m) in by)
        cells = [n, first["tags"] or "–", _f(first["frames"])]
        for m in methods:
            r = by.get((n, m))
            cells.append("failed" if r is None or r["status"] != "ok" else f"{_f(r['miou'])} ({_f(r['flicker'], 2)})")
        body.append(cells)
    out += _grid(["bag", "weather tags", "frames", *methods], body)
    if any(r.get("quality_ok") is not None for r in s["rows"]):
        out += ["", "per bag: mean quality estimate (estimated pixel accuracy; frames OK / WARN / ERROR)"]
        body = []
        for n in names:
            cells = [n]
            for m in methods:
                r = by.get((n, m))
                cells.append("–" if r is None or r["status"] != "ok" or r.get("quality_ok") is None else
                             f"{_f(r['quality'], 2)} ({r['quality_ok']} / {r['quality_warn']} / {r['quality_error']})")
            body.append(cells)
        body.append(["overall", *[("–" if s["overall"][m].get("quality_ok") is None else
                                   f"{_f(s['overall'][m]['quality'], 2)} ({s['overall'][m]['quality_ok']} / "
                                   f"{s['overall'][m]['quality_warn']} / {s['overall'][m]['quality_error']})")
                                  for m in methods]])
        out += _grid(["bag", *methods], body)
    if tags or any(s["overall"][m]["bags"] for m in methods):
        out += ["", "per weather tag: mIoU % pooled over the bags carrying it (label flicker %; bags)"]
        body = [[t, *[f"{_f(s['per_tag'][m][t]['miou'])} ({_f(s['per_tag'][m][t]['flicker'], 2)}; "
                      f"{s['per_tag'][m][t]['bags']})" for m in methods]] for t in tags]
        body.append(["overall", *[f"{_f(s['overall'][m]['miou'])} ({_f(s['overall'][m]['flicker'], 2)}; "
                                  f"{s['overall'][m]['bags']})" for m in methods]])
        out += _grid(["tag", *methods], body)
    if s["paired"]:
        out += ["", f"paired over bags, each method minus {methods[0]}: mean difference [95 % interval], "
                    "bags won / bags"]
        for p in s["paired"]:
            verdict = "significant" if p["significant"] else "not significant"
            iv = (f"[{p['ci95_low']:+.2f}, {p['ci95_high']:+.2f}]" if p["bags"] >= 2 and not math.isnan(p["ci95_low"])
                  else "(one bag: no interval)")
            out.append(f"  {p['method']} - {p['reference']}, {p['metric']} {p['cell']}: {p['difference']:+.2f} {iv}, "
                       f"{p['wins']}/{p['bags']} bags; {verdict}")
    for f in s["failed"]:
        out.append(f"failed: {f['bag']} ({f['method']}): {f['reason']}")
    t = s["timing"]
    if t["runs"]:
        out += ["", f"{t['runs']} run(s) in {t['wall_s']:.1f} s on {_engine(s['cluster'])}: "
                    f"{_f(t['frames_per_s'])} frames/s (engine start {_f(s['cluster'].get('start_s'))} s); per bag: task {_f(t['task_s_mean'], 2)} s (replay "
                    f"{_f(t['replay_s_mean'], 2)} s, scoring {_f(t['score_s_mean'], 2)} s), engine overhead "
                    f"{_f(t['overhead_s_mean'], 2)} s (max {_f(t['overhead_s_max'], 2)} s), CPU per task "
                    f"{_f(t.get('cpu_per_wall'), 2)} cores while it ran, peak RSS {_f(t['peak_rss_mb_max'], 0)} MB"]
    return "\n".join(out)


def _engine(c: dict[str, Any]) -> str:
    if c.get("engine") != "ray":
        return "this process (no Ray)"
    where = "a local Ray" if c.get("address") == "local" else f"Ray at {c.get('address')}"
    return f"{where}, {c.get('parallel')} at once"


# ----------------------------------------------------------------------------------------- files
def write_summary(s: dict[str, Any], out: Path, plot: bool = True) -> dict[str, str]:
    from ..atomic import atomic_write_text
    from ..bench.output import write_json, write_rows_csv

    out = Path(out)
    files = {"txt": str(atomic_write_text(out / "summary.txt", format_summary(s) + "\n")),
             "json": str(write_json(out / "summary.json", s)),
             "csv": str(write_rows_csv(out / "summary.csv", s["rows"]))}
    tag_rows = [{"method": m, "tag": t, **s["per_tag"][m][t]} for m in s["methods"] for t in s["tags"]]
    tag_rows += [{"method": m, "tag": "overall", **{k: v for k, v in s["overall"][m].items() if k not in ("ok", "failed")}}
                 for m in s["methods"]]
    files["tags"] = str(write_rows_csv(out / "tags.csv", tag_rows))
    if s["paired"]:
        files["paired"] = str(write_rows_csv(out / "paired.csv", s["paired"]))
    if plot:
        png = plot_summary(s, out / "summary.png")
        if png:
            files["png"] = str(png)
        png = plot_timeline(s, out / "timeline.png")
        if png:
            files["timeline"] = str(png)
    return files


def plot_summary(s: dict[str, Any], path: Path) -> Optional[Path]:
    """mIoU per bag and per weather tag, one bar per method."""
    from ..plots import plot_grouped_bars

    names = list(dict.fromkeys(r["bag"] for r in s["rows"]))
    by = {(r["bag"], r["method"]): r for r in s["rows"]}
    panels = {"per bag": {n: {m: by[(n, m)]["miou"] for m in s["methods"] if (n, m) in by} for n in names},
              "per weather tag (pooled)": {t: {m: s["per_tag"][m][t]["miou"] for m in s["methods"]}
                                           for t in [*s["tags"]]} | {"overall": {m: s["overall"][m]["miou"]
                                                                                for m in s["methods"]}}}
    if not any(math.isfinite(v) for p in panels.values() for g in p.values() for v in g.values()):
        return None
    return plot_grouped_bars(path, panels, ylabel="mIoU %", title="fleet: mIoU per bag and per weather tag")


def plot_timeline(s: dict[str, Any], path: Path) -> Optional[Path]:
    """Each run of this invocation as a bar from submission to result, one lane per worker process."""
    from ..plots import plot_lanes

    spans = [(r["worker"], float(r["submitted_s"]), float(r["wall_s"]), r["method"], r["bag"]) for r in s["rows"]
             if r.get("now") and r.get("wall_s") is not None and r.get("submitted_s") is not None]
    if not spans:
        return None
    t = s["timing"]
    return plot_lanes(path, spans, xlabel="seconds since the engine was up", title=f"fleet timeline: {t['runs']} run(s), {t['wall_s']:.0f} s, "
                                         f"{_engine(s['cluster'])}")


def plot_scaling(runs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Frames per second against parallel bags, several runs over the same bags, with the linear
    line, and the CPU cores the tasks got (what a shared machine left them)."""
    from ..plots import plot_throughput

    points = []
    for s in runs:
        c, t = s["cluster"], s["timing"]
        n = int(c.get("parallel") or 1) if c.get("engine") == "ray" else 1
        points.append((n, float(t["frames_per_s"] or 0), t.get("cores_used")))
    return plot_throughput(path, points)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tta_perception.fleet.summary",
                                description="print a fleet run's summary again, or plot the scaling of several runs")
    p.add_argument("runs", nargs="+", type=Path, help="fleet output folders")
    p.add_argument("--scaling", type=Path, default=None, help="PNG: frames/s against parallel bags")
    args = p.parse_args(argv)
    loaded = [json.loads((r / "summary.json").read_text()) for r in args.runs]
    if args.scaling:
        print(f"wrote {plot_scaling(loaded, args.scaling)}")
    else:
        for s in loaded:
            print(format_summary(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
