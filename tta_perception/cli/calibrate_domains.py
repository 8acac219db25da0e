"""calibrate-domains: the shift detector's calibration for an embedded model, from clear source data.

Renders clear-weather frames (or crops) of the training worlds (seeds >= 1000, as the source model's
training set; never an evaluation world), takes the features domain memory watches (the input of
the model's first BatchNorm) and stores their standardisation and the 99th-percentile threshold in
the model's manifest entry (``domain_calibration``), where the node and the benchmark read it."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

HELP = "calibrate domain memory's shift detector for an embedded model on clear source frames"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="driveseg", help="embedded model name (driveseg, signnet)")
    p.add_argument("--frames", type=int, default=240, help="clear source frames (seg) or crops (cls)")
    p.add_argument("--seed", type=int, default=5, help="render seed (training worlds: seeds >= 1000)")
    p.add_argument("--out", type=Path, default=None,
                   help="write the calibration JSON here instead of into the manifest")


def run(args: argparse.Namespace) -> int:
    from ..engine.domains import calibrate, source_features
    from ..models.checkpoint import MANIFEST, read_manifest
    from ..runtime.model_loader import load_model
    from ..runtime.preprocess import to_tensor
    from ..training import render_cls_set, render_seg_set

    manifest = read_manifest()
    if args.model not in manifest:
        raise ValueError(f"--model must be an embedded model ({', '.join(sorted(manifest))}), got {args.model!r}")
    model = load_model(args.model).model
    if model.task == "seg":
        images, _ = render_seg_set(args.frames, seed=args.seed)
    else:
        images, _ = render_cls_set(args.frames, seed=args.seed)
    cal = calibrate(source_features(model, to_tensor(images)))
    cal.update(command="tta-perception " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
               data=f"{args.frames} clear source {'frames' if model.task == 'seg' else 'crops'}, render seed {args.seed}")
    print(f"{args.model}: threshold {cal['threshold']:.3f} over {cal['frames']} clear source samples")
    if args.out:
        args.out.write_text(json.dumps(cal, indent=1) + "\n")
        print(f"wrote {args.out}")
        return 0
    manifest[args.model]["domain_calibration"] = cal
    from ..atomic import atomic_write_text

    atomic_write_text(MANIFEST, json.dumps(manifest, indent=2) + "\n")
    print(f"updated {MANIFEST}")
    return 0
