"""evaluate: score a source model (no adaptation) on clear weather and on every shift."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_device, device_of, source_model

HELP = "score the source model per domain: seg sequences (mIoU), sign crops under weather / corruptions (error)"

SEG_SEQUENCES = ("clear", "day2night", "clear2fog", "clear2rain")
CLS_WEATHERS = ("ClearNoon", "ClearNight", "HeavyFogNoon", "HardRainNoon")
HELDOUT_CLS_SEED = 7  # world/crop seeds < 1000 are never used for training
HELDOUT_SEG = dict(sequence="clear", stride=4)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("seg", "cls"), required=True)
    p.add_argument("--weights", type=Path, default=None, help="checkpoint (default: the committed source model)")
    p.add_argument("--sequences", default=",".join(SEG_SEQUENCES), help="seg: comma-separated sequence names")
    p.add_argument("--stride", type=int, default=2, help="seg: evaluate every k-th frame")
    p.add_argument("--n", type=int, default=1200, help="cls: held-out crops per domain")
    p.add_argument("--severity", type=int, default=5, help="cls: ImageNet-C severity")
    p.add_argument("--workers", type=int, default=2, help="render processes")
    p.add_argument("--out", type=Path, default=Path("runs/evaluate"), help="folder for JSON + plots")
    add_device(p)


def heldout_clear_score(model, task: str, frames: int | None = None) -> dict:
    """The manifest's clear-weather score: unseen world (seg) / unseen crops (cls)."""
    from ..evaluation import evaluate_sequence
    from ..training import evaluate_arrays
    from ..world.sign_crops import render_sign_crops
    from ..world.weather import preset

    if task == "seg":
        res = evaluate_sequence(model, HELDOUT_SEG["sequence"], stride=HELDOUT_SEG["stride"], frames=frames,
                                progress=False)
        return {"miou": round(res.total.miou(), 4), "set": f"sequence clear (world seed 0), every "
                f"{HELDOUT_SEG['stride']}th frame" + (f" of the first {frames}" if frames else "")}
    n = frames or 1200
    x, y = render_sign_crops(n, preset("ClearNoon"), seed=HELDOUT_CLS_SEED)
    return {"accuracy": evaluate_arrays(model, x, y, "cls")["accuracy"], "set": f"{n} ClearNoon crops, seed 7"}


def heldout_domain_scores(model, task: str, stride: int = 10, n: int = 256, severity: int = 5,
                          progress: bool = True) -> dict:
    """Per-domain held-out scores for the manifest (the oracle's; ``evaluate`` gives the same for any
    model): seg, mIoU per domain of the four benchmark sequences at the benchmark's stride; cls,
    error on ``n`` held-out crops (the benchmark's size) per weather and per corruption."""
    from ..evaluation import evaluate_sequence

    if task == "cls":
        out = cls_domain_errors(model, n, severity, progress=progress)
        out["set"] = f"{n} held-out crops (seed {HELDOUT_CLS_SEED}), corruptions at severity {severity}"
        return out
    out: dict = {}
    for name in ("day2night", "clear2fog", "clear2rain", "dynamic"):
        res = evaluate_sequence(model, name, stride=stride, progress=progress)
        out[name] = {k: round(v, 4) for k, v in res.table().items()}
    out["set"] = f"the four benchmark sequences (world seed 0), every {stride}th frame"
    return out


def cls_domain_errors(model, n: int, severity: int, progress: bool = True) -> dict:
    """Error (fraction) on ``n`` held-out crops under each of ``CLS_WEATHERS`` and under each
    corruption (applied to the ClearNoon crops), and the mean over the corruptions."""
    import numpy as np
    from tqdm.auto import tqdm

    from ..training import evaluate_arrays
    from ..world.corruptions import CORRUPTIONS, corrupt_images
    from ..world.sign_crops import render_sign_crops
    from ..world.weather import preset

    out = {"weather_error": {}, "corruption_error": {}}
    clean = None
    for name in CLS_WEATHERS:
        x, y = render_sign_crops(n, preset(name), seed=HELDOUT_CLS_SEED)
        if name == "ClearNoon":
            clean = (x, y)
        out["weather_error"][name] = round(1 - evaluate_arrays(model, x, y, "cls")["accuracy"], 4)
    x, y = clean
    for c in tqdm(CORRUPTIONS, desc=f"corruptions s{severity}", unit="corruption", disable=not progress):
        xc = corrupt_images(x, c, severity, seed=HELDOUT_CLS_SEED)
        out["corruption_error"][c] = round(1 - evaluate_arrays(model, xc, y, "cls")["accuracy"], 4)
    out["corruption_mean_error"] = round(float(np.mean(list(out["corruption_error"].values()))), 4)
    return out


def _seg(args, model) -> dict:
    from ..evaluation import evaluate_sequence

    results = {}
    for name in [s.strip() for s in args.sequences.split(",") if s.strip()]:
        res = evaluate_sequence(model, name, stride=args.stride, workers=args.workers)
        results[name] = {k: round(v, 4) for k, v in res.table().items()}
    clear = results.get("clear", {}).get("all")
    print(f"\n{args.weights or 'source model driveseg'}, mIoU per domain (every {args.stride}th frame):")
    for name, table in results.items():
        cells = "  ".join(f"{d}={v * 100:5.1f}" for d, v in table.items())
        print(f"  {name:<11} {cells}")
    if clear is not None:
        worst = {n: min(v for d, v in t.items() if d != "all") for n, t in results.items() if n != "clear"}
        drops = {n: round((clear - w) * 100, 1) for n, w in worst.items()}
        print(f"  drop from clear ({clear * 100:.1f}) to the hardest domain of each sequence (points): {drops}")
        results["drop_points"] = drops
    return results


def _cls(args, model) -> dict:
    out = cls_domain_errors(model, args.n, args.severity)
    mean = out["corruption_mean_error"]
    print(f"\n{args.weights or 'source model signnet'}, error % on {args.n} held-out crops:")
    print("  weather:     " + "  ".join(f"{k}={v * 100:.1f}" for k, v in out["weather_error"].items()))
    print("  corruptions: " + "  ".join(f"{k}={v * 100:.1f}" for k, v in out["corruption_error"].items()))
    print(f"  mean over the 15 corruptions at severity {args.severity}: {mean * 100:.1f} "
          f"(clear: {out['weather_error']['ClearNoon'] * 100:.1f})")
    return out


def run(args: argparse.Namespace) -> int:
    from ..plots import plot_bars
    from .common import refuse_unused

    # no silent no-op: each task's options are refused with the other task
    refuse_unused(args, add_arguments, [
        (args.task == "cls", ["sequences", "stride", "workers"], "--task seg only"),
        (args.task == "seg", ["n", "severity"], "--task cls only")])
    device = device_of(args)
    model = source_model(args.task, args.weights, device)
    result = _seg(args, model) if args.task == "seg" else _cls(args, model)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"source_{args.task}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    if args.task == "cls":
        bars = {**{f"weather:{k}": v * 100 for k, v in result["weather_error"].items()},
                **{k: v * 100 for k, v in result["corruption_error"].items()}}
        plot_bars(args.out / "source_cls.png", bars, "error %", "signnet source model")
    else:
        bars = {f"{s}:{d}": v * 100 for s, t in result.items() if s != "drop_points" for d, v in t.items()}
        plot_bars(args.out / "source_seg.png", bars, "mIoU %", "driveseg source model")
    print(f"wrote {path} and a plot beside it")
    return 0
