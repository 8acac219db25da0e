"""What the streaming benchmark reports about video (``docs/video.md``): label flicker beside the mIoU,
per phase, and the paired effect of each temporal option on both.

- Flicker table per stream: label flicker % (``metrics.flicker``) per phase and over the sequence
  (``seq``), mean over seeds (± 95 % CI with several seeds). Lower is steadier.
- Paired effects: every ``<m>+tf`` / ``<m>+tfa`` row against ``<m>`` (output fusion, fixed /
  adaptive; the same run, so exactly paired), ``<m>+tfa`` against ``<m>+tf``, and each DPLOT
  variant with temporal pseudo-labels (``dplot-tpl``, ``dplot-tplr``) against ``dplot`` (fused
  against ``dplot`` fused the same way): per seed the difference of each cell, then its Student-t
  interval over seeds; ``*`` marks an interval that excludes 0. Across several streams also the
  difference of the mean over the streams of the ``seq`` cells.
- Costs: the flow per frame and the fusion per frame (ms, same process).
Writes ``flicker_<stream>.csv`` and ``temporal_paired.csv``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..metrics import paired_difference, t_interval
from .output import write_rows_csv
from .report import SHORT
from .runner import MethodRun, runs_of
from .streams import BenchStream
from .variants import VARIANTS, fused_base

CONFIDENCE = 0.95
METRICS = ("mIoU", "flicker")


def _cells(stream: BenchStream, run: MethodRun, metric: str) -> dict[str, float]:
    src = run.domains if metric == "mIoU" else run.flicker
    vals = {c: src.get(stream.column_domain[c], float("nan")) for c in stream.columns}
    vals["seq"] = run.overall if metric == "mIoU" else run.flicker_overall
    return vals


def pairs_of(methods: Sequence[str]) -> list[tuple[str, str]]:
    """(variant, base) pairs whose difference the report gives."""
    out = [(m, fused_base(m)[0]) for m in methods if VARIANTS[m].fused and fused_base(m)[0] in methods]
    # the adaptive fusion against the fixed one, of the same run
    out += [(m, m[:-1]) for m in methods if VARIANTS[m].fused and m.endswith("+tfa") and m[:-1] in methods]
    for m in methods:  # DPLOT with temporal pseudo-labels against DPLOT (fused against fused, same mode)
        v = VARIANTS[m]
        base = "dplot" + m[len(fused_base(m)[0]):] if v.fused else "dplot"
        if v.method == "dplot" and v.overrides.get("temporal_pl") and base in methods:
            out.append((m, base))
    return out


def _by_seed(runs: Sequence[MethodRun], method: str, stream: str) -> dict[int, MethodRun]:
    return {r.seed: r for r in runs_of(runs, method, stream)}


def _fmt_diff(iv) -> str:
    if iv.n == 0 or math.isnan(iv.mean):
        return "–"
    if iv.n < 2:
        return f"{iv.mean:+.2f}"
    return f"{iv.mean:+.2f}±{iv.half_width:.2f}" + ("*" if iv.significant else "")


def temporal_report(streams: Sequence[BenchStream], runs: Sequence[MethodRun], methods: Sequence[str],
                    out: Path) -> tuple[list[str], dict[str, Any]]:
    """The text blocks and the JSON part (empty when no run measured flicker)."""
    if not any(r.flicker for r in runs):
        return [], {}
    text: list[str] = []
    payload: dict[str, Any] = {"confidence": CONFIDENCE, "streams": {}}
    pairs = pairs_of(methods)
    rows_csv: list[dict[str, Any]] = []
    seq_by_pair: dict[tuple[str, str], dict[str, dict[str, dict[int, float]]]] = {}
    for st in streams:
        cells = list(st.columns) + ["seq"]
        block: list[str] = []
        flick_rows = []
        heads = [SHORT.get(c, c) for c in cells]
        mw = max([8] + [len(m) for m in methods])
        table = [f"{st.name}: label flicker % (pixels whose class changes between consecutive frames along the "
                 "flow, where the flow is valid and the ground truth does not change; lower = steadier), "
                 "mean ± 95 % CI over seeds",
                 f"{'method':<{mw}} " + " ".join(f"{h:>13}" for h in heads) + f" {'flow ms':>8} {'fuse ms':>8}"]
        st_payload: dict[str, Any] = {"flicker": {}, "pairs": {}}
        for m in methods:
            rs = _by_seed(runs, m, st.name)
            if not rs or not any(r.flicker for r in rs.values()):
                continue
            per = {c: [_cells(st, rs[s], "flicker")[c] for s in sorted(rs)] for c in cells}
            ivs = {c: t_interval([v for v in per[c] if not math.isnan(v)], CONFIDENCE) for c in cells}
            flow_ms = _mean([r.temporal.get("flow_ms", float("nan")) for r in rs.values()])
            fuse_ms = _mean([r.temporal.get("fusion_ms", float("nan")) for r in rs.values()])
            table.append(f"{m:<{mw}} " + " ".join(f"{ivs[c].format(1):>13}" for c in cells)
                         + f" {flow_ms:>8.2f} {fuse_ms:>8.2f}")
            st_payload["flicker"][m] = {"seeds": sorted(rs), "values": per,
                                        "cells": {c: iv.as_dict() for c, iv in ivs.items()},
                                        "flow_ms": flow_ms, "fusion_ms": fuse_ms,
                                        "chain": next(iter(rs.values())).temporal}
            flick_rows += [{"stream": st.name, "method": m, "cell": c, "mean": ivs[c].mean,
                            "ci95_half_width": ivs[c].half_width, "n_seeds": ivs[c].n,
                            "values": " ".join(f"{v:.4f}" for v in per[c])} for c in cells]
        block.append("\n".join(table))
        write_rows_csv(Path(out) / f"flicker_{st.name.replace('/', '_')}.csv", flick_rows)
        if pairs:
            lines = [f"{st.name}: paired effect of the temporal options, variant − base per seed, mean ± 95 % CI "
                     "(* = interval excludes 0); mIoU points (higher better), flicker points (lower better)",
                     f"{'variant − base':<{mw * 2 + 3}} {'metric':<8} " + " ".join(f"{h:>13}" for h in heads)
                     + f" {'rel. seq':>9}"]
            for a, b in pairs:
                ra, rb = _by_seed(runs, a, st.name), _by_seed(runs, b, st.name)
                seeds = sorted(set(ra) & set(rb))
                if not seeds:
                    continue
                for metric in METRICS:
                    va = {c: [_cells(st, ra[s], metric)[c] for s in seeds] for c in cells}
                    vb = {c: [_cells(st, rb[s], metric)[c] for s in seeds] for c in cells}
                    diffs = {c: _paired(va[c], vb[c]) for c in cells}
                    base_seq = _mean(vb["seq"])
                    rel = diffs["seq"].mean / base_seq if base_seq else float("nan")
                    lines.append(f"{a + ' − ' + b:<{mw * 2 + 3}} {metric:<8} "
                                 + " ".join(f"{_fmt_diff(diffs[c]):>13}" for c in cells) + f" {100 * rel:>+8.1f}%")
                    st_payload["pairs"][f"{a} - {b} {metric}"] = {
                        "seeds": seeds, "cells": {c: d.as_dict() for c, d in diffs.items()}, "relative_seq": rel}
                    for c in cells:
                        d = diffs[c]
                        rows_csv.append({"stream": st.name, "variant": a, "base": b, "metric": metric, "cell": c,
                                         "variant_mean": _mean(va[c]), "base_mean": _mean(vb[c]),
                                         "difference": d.mean, "ci95_low": d.low, "ci95_high": d.high,
                                         "n_seeds": d.n, "significant": d.significant})
                    seq_by_pair.setdefault((a, b), {}).setdefault(metric, {})[st.name] = {
                        s: (va["seq"][i], vb["seq"][i]) for i, s in enumerate(seeds)}
            block.append("\n".join(lines))
        text.append("\n".join(block))
        payload["streams"][st.name] = st_payload
    if len(streams) > 1 and seq_by_pair:
        lines = ["mean over the streams of the seq cells: variant − base per seed, mean ± 95 % CI (* = excludes 0)"]
        payload["summary"] = {}
        for (a, b), per_metric in seq_by_pair.items():
            for metric, per_stream in per_metric.items():
                if len(per_stream) != len(streams):
                    continue
                seeds = sorted(set.intersection(*(set(v) for v in per_stream.values())))
                va = [sum(per_stream[n][s][0] for n in per_stream) / len(per_stream) for s in seeds]
                vb = [sum(per_stream[n][s][1] for n in per_stream) / len(per_stream) for s in seeds]
                d = _paired(va, vb)
                lines.append(f"  {a} − {b}, {metric}: {_mean(va):.2f} vs {_mean(vb):.2f}: {_fmt_diff(d)} "
                             f"[{d.low:+.2f}, {d.high:+.2f}] over {d.n} seeds"
                             + ("" if d.n < 2 else (" significant" if d.significant else " not significant")))
                payload["summary"][f"{a} - {b} {metric}"] = {"seeds": seeds, "variant": va, "base": vb,
                                                             "difference": d.as_dict()}
                rows_csv.append({"stream": "mean", "variant": a, "base": b, "metric": metric, "cell": "seq",
                                 "variant_mean": _mean(va), "base_mean": _mean(vb), "difference": d.mean,
                                 "ci95_low": d.low, "ci95_high": d.high, "n_seeds": d.n,
                                 "significant": d.significant})
        text.append("\n".join(lines))
    if rows_csv:
        write_rows_csv(Path(out) / "temporal_paired.csv", rows_csv)
        payload["paired_csv"] = str(Path(out) / "temporal_paired.csv")
    return text, payload


def _paired(a: Sequence[float], b: Sequence[float]):
    keep = [(x, y) for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
    return paired_difference([x for x, _ in keep], [y for _, y in keep], CONFIDENCE)


def _mean(vals: Sequence[float]) -> float:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


# ------------------------------------------------------------------------------------ cost per frame
def measure_costs(sequence: str = "day2night", start: int = 800, frames: int = 100, size=(128, 256),
                  repeats: int = 3, cache_dir: Path | None = None) -> dict[str, Any]:
    """Flow (every preset, with and without the forward-backward check) and fusion, ms per frame on
    consecutive rendered frames at the model input size, one thread (torch and OpenCV), the best
    of ``repeats`` passes; plus the source model's forward pass on the same frames for scale."""
    import time

    import cv2
    import torch

    from ..engine.temporal import PRESETS, FlowChain, TemporalFusion
    from ..runtime.model_loader import load_model
    from .common import DEFAULT_CACHE
    from .streams import sequence_frames

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    d = sequence_frames(sequence, start=start, stop=start + frames, size=size, workers=1, progress=False,
                        cache_dir=Path(cache_dir) if cache_dir else DEFAULT_CACHE)
    xs = [torch.from_numpy(r).permute(2, 0, 1).float() / 255.0 for r in d["rgb"]]
    out: dict[str, Any] = {"sequence": sequence, "frames": f"{start}..{start + frames - 1}", "size": list(size),
                           "threads": 1, "flow": {}}
    for preset in PRESETS:
        for fb in (True, False):
            best, valid = float("inf"), float("nan")
            for _ in range(repeats):
                chain = FlowChain(preset, fb)
                t0 = time.perf_counter()
                motions = [chain.update(x) for x in xs]
                best = min(best, (time.perf_counter() - t0) * 1e3 / len(xs))
                valid = float(np.mean([m.valid.mean() for m in motions if m is not None]))
            out["flow"][f"{preset}{'' if fb else ' (no fb check)'}"] = {"ms": best, "valid_fraction": valid}
    model = load_model(architecture="driveseg").model.eval()
    chain = FlowChain()
    motions = [chain.update(x) for x in xs]
    with torch.no_grad():
        logits = [model(x[None]) for x in xs[:20]]
        best_fwd, best_fuse = float("inf"), float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for x in xs[:20]:
                model(x[None])
            best_fwd = min(best_fwd, (time.perf_counter() - t0) * 1e3 / 20)
            fusion = TemporalFusion(0.5)
            t0 = time.perf_counter()
            for z, m in zip(logits, motions):
                fusion(z, m)
            best_fuse = min(best_fuse, (time.perf_counter() - t0) * 1e3 / len(logits))
    out["fusion_ms"] = best_fuse
    out["source_forward_ms"] = best_fwd
    return out


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m tta_perception.bench.temporal",
                                description="cost per frame of the optical flow presets and of the output fusion")
    p.add_argument("--sequence", default="day2night")
    p.add_argument("--start", type=int, default=800)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    a = p.parse_args(argv)
    r = measure_costs(a.sequence, a.start, a.frames, cache_dir=a.cache)
    print(f"{a.sequence} frames {r['frames']} at {r['size'][0]}x{r['size'][1]}, one thread, best of 3 passes")
    print(f"{'flow preset':<28} {'ms/frame':>9} {'valid %':>8}")
    for k, v in r["flow"].items():
        print(f"{k:<28} {v['ms']:>9.2f} {100 * v['valid_fraction']:>8.1f}")
    print(f"fusion (14 classes, w 0.5): {r['fusion_ms']:.2f} ms/frame; source forward pass: "
          f"{r['source_forward_ms']:.2f} ms/frame")
    if a.out:
        a.out.write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
