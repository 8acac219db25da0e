"""Stress cases for the quality estimate and the collapse guard, each against the same run without
the fault (same frames, same seed: paired frame by frame).

- ``lens_cap``: ``--fault-seconds`` (30) of black frames in the middle of a drive, then the camera
  again; ``grey``: the same with a constant grey frame (a frozen exposure);
- ``dirty_lens``: the same span under heavy blur (defocus blur, severity 5), then clean;
- ``tent_x10``: Tent at ten times its learning rate over ``--cycles`` weather cycles, beside source.

For the fault cases: the share of the faulty frames published WARN or ERROR (the stack should not
trust them), the mIoU of the frames after the fault minus the reference run's on the same frames
(a poisoned state shows here), and the frames until the rolling 10-frame mIoU is back within 1 point
of the reference's. For ``tent_x10``: per cycle mIoU minus source, without and with the guard, and
the guard's recoveries with their reasons. Every run goes through the node's frame path
(``runtime.frame_path``) with the quality estimate and, where named, the guard.

``python -m tta_perception.bench.stress [--cases lens_cap,grey,dirty_lens,tent_x10] [--methods tent,dplot]
[--seed 0] [--out runs/stress]``
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

CASES = ("lens_cap", "grey", "dirty_lens", "tent_x10")
BACK_WITHIN_POINTS = 1.0
ROLLING = 10


def fault_frames(rgb: np.ndarray, case: str, start: int, stop: int) -> np.ndarray:
    """The frames with the fault applied on [start, stop)."""
    from .quality import corrupt

    out = rgb.copy()
    if case == "lens_cap":
        out[start:stop] = 0
    elif case == "grey":
        out[start:stop] = 128
    elif case == "dirty_lens":
        out[start:stop] = corrupt(rgb[start:stop], "defocus_blur", 5)
    else:
        raise ValueError(f"unknown fault {case!r}")
    return out


def run_path(method: Any, rgb: np.ndarray, labels: np.ndarray, *, guard: bool, quality: Any, source_quality: Any,
             window: int = 4, adapt_every: int = 4, desc: str = "", progress: bool = True) -> dict[str, Any]:
    """One run through the frame path: per frame mIoU, estimate and level; the guard's counts."""
    from tqdm.auto import tqdm

    from ..metrics import ConfusionMatrix
    from ..runtime.adapter import build_adapter
    from ..runtime.frame_path import FramePath
    from ..runtime.guard import CollapseGuard
    from ..runtime.preprocess import to_tensor

    adapter = build_adapter(method, window=window, adapt_every=adapt_every, background=False)
    g = CollapseGuard(adapter, source_quality=source_quality,
                      calibration=getattr(quality, "calibration", None)) if guard else None
    path = FramePath(adapter, flow=False, quality=quality, guard=g)
    miou, est, level, recoveries = [], [], [], []
    try:
        for i in tqdm(range(len(rgb)), desc=desc, unit="frame", disable=not progress, leave=False):
            rec = path.run(to_tensor(rgb[i:i + 1]).to(method.device))[0]
            cm = ConfusionMatrix(method.num_classes)
            cm.update(rec.output.argmax(0).cpu().numpy(), labels[i])
            miou.append(100.0 * cm.miou())
            est.append(rec.quality.estimate)
            level.append(rec.quality.level)
            if rec.recovery is not None:
                recoveries.append({"frame": i, "reason": rec.recovery.reason, "to": rec.recovery.to})
    finally:
        adapter.close()
    return {"miou": miou, "estimate": est, "level": level, "recoveries": recoveries,
            "guard": g.stats() if g is not None else {}, "steps": adapter.stats()["adapt_steps"]}


def frames_back(run: list[float], ref: list[float], start: int) -> Optional[int]:
    """Frames after ``start`` until the rolling mean of ``run`` is within BACK_WITHIN_POINTS of the
    reference's (None: never)."""
    a, b = np.asarray(run, float), np.asarray(ref, float)
    for k in range(start, len(a) - ROLLING + 1):
        if np.mean(a[k:k + ROLLING]) >= np.mean(b[k:k + ROLLING]) - BACK_WITHIN_POINTS:
            return k - start
    return None


def fault_row(case: str, method: str, guard: bool, run: dict, ref: dict, span: tuple[int, int]) -> dict[str, Any]:
    s, e = span
    lv = np.asarray(run["level"][s:e])
    after = slice(e, None)
    return {"case": case, "method": method, "guard": guard,
            "fault_frames_warn_or_error_pct": 100.0 * float((lv >= 1).mean()),
            "fault_frames_error_pct": 100.0 * float((lv >= 2).mean()),
            "after_miou_minus_reference": float(np.mean(run["miou"][after]) - np.mean(ref["miou"][after])),
            "frames_back_within_1pt": frames_back(run["miou"], ref["miou"], e),
            "recoveries": len(run["recoveries"]), "blind_frames_not_adapted": run["guard"].get("guard_blind_frames"),
            "steps": run["steps"], "reference_steps": ref["steps"]}


def main(argv: Optional[Sequence[str]] = None, log: Callable[[str], None] = print) -> int:
    import torch

    from ..models.checkpoint import read_manifest
    from ..paths import WEIGHTS_DIR
    from ..runtime.model_loader import load_model
    from ..runtime.quality import QualityEstimator, load_calibration
    from ..world.schedule import load_schedule
    from .output import markdown_table, write_report
    from .streams import sequence_frames, stream_seeds
    from .variants import build_variant

    p = argparse.ArgumentParser(prog="python -m tta_perception.bench.stress", description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--methods", default="tent,dplot", help="methods of the fault cases")
    p.add_argument("--model", default="driveseg")
    p.add_argument("--seed", type=int, default=0, help="benchmark seed (the world of the drive)")
    p.add_argument("--stride", type=int, default=2, help="fault cases: every N-th frame of the 10 fps drive")
    p.add_argument("--fault-seconds", type=float, default=30.0)
    p.add_argument("--before-seconds", type=float, default=20.0)
    p.add_argument("--after-seconds", type=float, default=30.0)
    p.add_argument("--cycles", type=int, default=20, help="tent_x10: weather cycles (stride 10)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=Path("runs/stress"))
    a = p.parse_args(argv)
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        p.error(f"unknown case(s) {', '.join(bad)}; known: {', '.join(CASES)}")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    lm = load_model(a.model)
    entry = read_manifest().get(a.model, {})
    bundle = None
    if entry.get("dplot_bundle", {}).get("file"):
        from ..engine.bundle import load_bundle

        bundle = load_bundle(WEIGHTS_DIR / entry["dplot_bundle"]["file"])
    src_cal, _ = load_calibration(a.model, "source")
    src_q = QualityEstimator(src_cal)
    sched = load_schedule("dynamic")
    world = stream_seeds(a.seed, sched.seed)["world_seed"]
    rows: list[dict[str, Any]] = []
    payload: dict[str, Any] = {"args": vars(a) | {"out": str(a.out)}, "cases": {}}

    def method_of(name: str, lr_scale: float = 1.0):
        torch.manual_seed(a.seed)
        extra = {}
        if lr_scale != 1.0:
            extra["lr"] = build_variant(name, copy.deepcopy(lm.model), bundle=bundle).cfg.lr * lr_scale
        return build_variant(name, copy.deepcopy(lm.model), bundle=bundle, extra=extra)

    def estimator(name: str):
        return QualityEstimator(load_calibration(a.model, name)[0])

    faults = [c for c in cases if c != "tent_x10"]
    if faults:
        fps = sched.fps / a.stride
        n_before, n_fault, n_after = (int(round(s * fps)) for s in (a.before_seconds, a.fault_seconds, a.after_seconds))
        stop = (n_before + n_fault + n_after) * a.stride
        d = sequence_frames("dynamic", start=0, stop=stop, stride=a.stride, world_seed=world, progress=not a.no_progress)
        span = (n_before, n_before + n_fault)
        for m in [x.strip() for x in a.methods.split(",") if x.strip()]:
            for guard in (False, True):
                tag = f"{m}{'+guard' if guard else ''}"
                ref = run_path(method_of(m), d["rgb"], d["labels"], guard=guard, quality=estimator(m),
                               source_quality=src_q, desc=f"{tag} reference", progress=not a.no_progress)
                for case in faults:
                    rgb = fault_frames(d["rgb"], case, *span)
                    run = run_path(method_of(m), rgb, d["labels"], guard=guard, quality=estimator(m),
                                   source_quality=src_q, desc=f"{tag} {case}", progress=not a.no_progress)
                    row = fault_row(case, m, guard, run, ref, span)
                    rows.append(row)
                    payload["cases"].setdefault(case, []).append({**row, "miou": run["miou"], "reference_miou": ref["miou"],
                                                                  "estimate": run["estimate"], "level": run["level"],
                                                                  "recoveries_list": run["recoveries"]})
                    log(f"{case:<10} {tag:<12} fault frames WARN/ERROR {row['fault_frames_warn_or_error_pct']:5.1f} % "
                        f"(ERROR {row['fault_frames_error_pct']:5.1f} %), after - reference "
                        f"{row['after_miou_minus_reference']:+6.2f} mIoU, back within 1 point after "
                        f"{row['frames_back_within_1pt']} frames, recoveries {row['recoveries']}")
    if "tent_x10" in cases:
        stop = int(round(a.cycles * sched.period * sched.fps))
        d = sequence_frames("dynamic", start=0, stop=stop, stride=10, world_seed=world, progress=not a.no_progress)
        per_cycle = int(round(sched.period * sched.fps)) // 10
        src = run_path(method_of("source"), d["rgb"], d["labels"], guard=False, quality=estimator("source"),
                       source_quality=src_q, desc="source", progress=not a.no_progress)
        cyc = lambda v: [float(np.mean(v[k:k + per_cycle])) for k in range(0, len(v), per_cycle)]
        out = {"source": cyc(src["miou"])}
        for guard in (False, True):
            run = run_path(method_of("tent", 10.0), d["rgb"], d["labels"], guard=guard, quality=estimator("tent"),
                           source_quality=src_q, desc=f"tent x10{' +guard' if guard else ''}",
                           progress=not a.no_progress)
            gap = [x - y for x, y in zip(cyc(run["miou"]), out["source"])]
            key = f"tent_x10{'+guard' if guard else ''}"
            out[key] = {"gap_per_cycle": gap, "recoveries": run["recoveries"], "guard": run["guard"],
                        "steps": run["steps"]}
            first_below = next((i + 1 for i, g in enumerate(gap) if g < -BACK_WITHIN_POINTS), None)
            rows.append({"case": "tent_x10", "method": "tent x10", "guard": guard, "worst_cycle_minus_source": min(gap),
                         "last_cycle_minus_source": gap[-1], "first_cycle_1pt_below_source": first_below,
                         "recoveries": len(run["recoveries"]), "steps": run["steps"]})
            log(f"tent_x10   {'guard' if guard else 'no guard':<12} cycle - source: worst {min(gap):+6.2f}, last "
                f"{gap[-1]:+6.2f}, first cycle > 1 point below source: {first_below}, recoveries "
                f"{len(run['recoveries'])}")
        payload["cases"]["tent_x10"] = out
    payload["seconds"] = round(time.perf_counter() - t_start, 1)
    cols = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    text = "\n".join(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()) for r in rows)
    files = write_report(a.out, "stress", text=text, payload=payload, rows=rows,
                         markdown=markdown_table(rows, cols))
    log(f"wrote {files['json']} in {payload['seconds']:.0f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
