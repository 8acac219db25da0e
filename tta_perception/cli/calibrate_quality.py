"""calibrate-quality: the per-frame quality estimate's calibration for an embedded segmentation model,
one per method, from labelled source data only (``bench.quality``: clear frames of the training worlds,
clean and under generic corruptions, the method adapting online over them). Stored in the model's
manifest entry (``quality_calibration``), where the node, ``replay`` and the benchmark read it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "calibrate the per-frame quality estimate of an embedded segmentation model on source data"
METHODS = "source,norm,tent,eata,sar,cotta,rmt,dplot"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="driveseg", help="embedded segmentation model (driveseg, lite0_seg)")
    p.add_argument("--methods", default=METHODS, help=f"methods to calibrate (default {METHODS}; source always)")
    p.add_argument("--frames-per-segment", type=int, default=40,
                   help="frames per clean/corruption segment of the calibration stream (16 segments)")
    p.add_argument("--window", type=int, default=4, help="adaptation window (the node's default)")
    p.add_argument("--adapt-every", type=int, default=4, help="adapt every N frames (the node's default)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", type=Path, default=None,
                   help="write the calibrations as JSON here instead of into the manifest")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..atomic import atomic_write_text
    from ..bench.quality import calibrate_methods
    from ..bench.variants import resolve_methods
    from ..models.checkpoint import MANIFEST, read_manifest

    if args.frames_per_segment < 4:
        raise ValueError("--frames-per-segment must be at least 4")
    if args.window < 1 or args.adapt_every < 1:
        raise ValueError("--window and --adapt-every must be >= 1")
    if args.threads < 0:
        raise ValueError("--threads must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = resolve_methods(args.methods)
    cals = calibrate_methods(args.model, methods, per_segment=args.frames_per_segment, window=args.window,
                             adapt_every=args.adapt_every, progress=not args.no_progress)
    if args.out:
        atomic_write_text(args.out, json.dumps(cals, indent=1) + "\n")
        print(f"wrote {args.out}")
        return 0
    manifest = read_manifest()
    manifest[args.model].setdefault("quality_calibration", {}).update(cals)
    atomic_write_text(MANIFEST, json.dumps(manifest, indent=2) + "\n")
    print(f"updated {MANIFEST} ({args.model}: {', '.join(cals)})")
    return 0
