"""Do a camera's frames reach the node? ``node-bench`` over camera sizes, rates, the publisher's
reliability and the DDS profile, with the node's default parameters: one table of published /
received / answered / dropped / lost per cell.

Each cell is its own ``tta-perception node-bench`` process, since DDS reads its profile once per
process. ``python -m tta_perception.bench.transport [--duration 10] [--out runs/transport]``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .delivery import GOAL
from .output import markdown_table, write_report

SIZES = ((480, 640), (720, 1280), (1080, 1920))
RATES = (10.0, 30.0)
PUBLISHERS = ("reliable", "best_effort")
PROFILES = ("default", "none")


def run_cell(size: tuple[int, int], rate: float, publisher: str, profile: str, *, duration: float, out: Path,
             method: str = "source", unique_frames: int = 10, encoding: str = "rgb8",
             timeout: float = 600.0) -> dict[str, Any]:
    """One node-bench run; its delivery row (or the one-line reason it failed)."""
    tag = f"{size[0]}x{size[1]}_{rate:g}hz_{publisher}_{profile}"
    cell_out = out / tag
    cmd = [sys.executable, "-m", "tta_perception.cli.main", "node-bench", "--method", method,
           "--size", f"{size[0]}x{size[1]}", "--rate", f"{rate:g}", "--duration", f"{duration:g}",
           "--publisher-qos", publisher, "--dds-profile", profile, "--encoding", encoding,
           "--unique-frames", str(unique_frames), "--no-overhead", "--no-plot", "--out", str(cell_out)]
    row: dict[str, Any] = {"size": f"{size[1]}x{size[0]}", "rate_hz": rate, "publisher": publisher,
                           "profile": profile}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    report_path = cell_out / "node_bench.json"
    if proc.returncode != 0 or not report_path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {**row, "error": tail[0]}
    report = json.loads(report_path.read_text())
    r = report["methods"][method]
    nd = r["node_diagnostics"]
    published, answered = int(r["published"]), int(r["matched_stamps"])
    received = int(nd["frames_received"] or 0)
    row.update({"published": published, "received": received, "answered": answered,
                "dropped": int(nd["frames_dropped"] or 0), "lost_before_node": max(0, published - received),
                "lost_in_transport": nd.get("lost_in_transport"), "subscription": nd.get("input_reliability"),
                "answered_pct": 100.0 * answered / published if published else float("nan"),
                "received_pct": 100.0 * received / published if published else float("nan"),
                "p50_ms": r["latency_ms"]["p50"]})
    return row


def run_grid(sizes: Sequence[tuple[int, int]] = SIZES, rates: Sequence[float] = RATES,
             publishers: Sequence[str] = PUBLISHERS, profiles: Sequence[str] = PROFILES, *,
             duration: float = 10.0, out: str | Path = "runs/transport", method: str = "source",
             log: Callable[[str], None] = print) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = list(itertools.product(sizes, rates, publishers, profiles))
    rows, t0 = [], time.monotonic()
    for i, (size, rate, publisher, profile) in enumerate(cells, 1):
        row = run_cell(size, rate, publisher, profile, duration=duration, out=out, method=method)
        rows.append(row)
        log(f"[transport] {i}/{len(cells)} {row['size']} {rate:g} Hz, {publisher} publisher, profile {profile}: "
            + (f"error: {row['error']}" if "error" in row else
               f"{row['answered']}/{row['published']} answered, {row['received']} received, "
               f"{row['lost_before_node']} lost before the node (node counted {row['lost_in_transport']}), "
               f"{row['dropped']} dropped ({time.monotonic() - t0:.0f} s)"))
    payload = {"settings": {"method": method, "duration_s": duration, "node_params": "defaults",
                            "goal_answered_pct": 100 * GOAL}, "rows": rows}
    cols = ["size", "rate_hz", "publisher", "profile", "published", "received", "answered", "dropped",
            "lost_before_node", "lost_in_transport", "subscription", "answered_pct", "p50_ms"]
    text = markdown_table(rows, cols, ["size", "Hz", "publisher", "DDS profile", "published", "received",
                                       "answered", "dropped", "lost before node", "node counted lost",
                                       "subscribed", "answered %", "p50 ms"], fmt="{:.1f}")
    payload["text"] = text
    payload["files"] = write_report(out, "transport", text=text, payload=payload, rows=rows, markdown=text,
                                    digits=None)
    log(text)
    return payload


def _size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tta_perception.bench.transport", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(f"{h}x{w}" for h, w in SIZES), help="HxW,... (camera sizes)")
    p.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES), help="publish rates (Hz)")
    p.add_argument("--publishers", default=",".join(PUBLISHERS), help="publisher reliabilities")
    p.add_argument("--profiles", default=",".join(PROFILES), help="DDS profiles (default, none or paths)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of publishing per cell")
    p.add_argument("--method", default="source", help="the node's method")
    p.add_argument("--out", type=Path, default=Path("runs/transport"), help="output folder")
    args = p.parse_args(argv)
    try:
        sizes = [_size(s) for s in args.sizes.split(",") if s]
        rates = [float(r) for r in args.rates.split(",") if r]
    except ValueError:
        p.error("--sizes takes HxW,... and --rates numbers")
    publishers = [q for q in args.publishers.split(",") if q]
    if any(q not in PUBLISHERS for q in publishers):
        p.error(f"--publishers takes {', '.join(PUBLISHERS)}")
    run_grid(sizes, rates, publishers, [q for q in args.profiles.split(",") if q], duration=args.duration,
             out=args.out, method=args.method)
    return 0


if __name__ == "__main__":
    sys.exit(main())
