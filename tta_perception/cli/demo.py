"""demo: the main job on the embedded default — drive through changing weather, run the source
model on every frame, print per-domain mIoU and write a plot."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_device, resolve_device

HELP = "drive the embedded world through changing weather; per-domain mIoU of the source model + plot"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sequence", default="dynamic", help="shipped sequence name or schedule YAML")
    p.add_argument("--frames", type=int, default=1200, help="frames to run (default: one weather cycle)")
    p.add_argument("--stride", type=int, default=1, help="use every k-th frame")
    p.add_argument("--workers", type=int, default=2, help="render processes")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    add_device(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..evaluation import evaluate_sequence
    from ..plots import plot_stream
    from ..world.classes import colorize
    from ..world.sequences import SequenceRenderer
    from .evaluate import load_model

    device = resolve_device(args.device)
    model = load_model("seg", None, device)
    res = evaluate_sequence(model, args.sequence, stride=args.stride, frames=args.frames, workers=args.workers)
    table = res.table()
    print(f"\n{res.name}: source model mIoU per domain ({len(res.frame_index)} frames, device {device})")
    for d, v in table.items():
        print(f"  {d:<12} {v * 100:5.1f}")
    args.out.mkdir(parents=True, exist_ok=True)
    # a few frames with the source model's prediction underneath
    sr = SequenceRenderer(args.sequence)
    picks = np.linspace(0, len(res.frame_index) - 1, 5).astype(int)
    samples = []
    for i in picks:
        f = sr.frame(res.frame_index[i])
        import torch
        with torch.no_grad():
            x = torch.from_numpy(f.rgb).permute(2, 0, 1)[None].float().div(255).to(device)
            pred = model(x).argmax(1)[0].cpu().numpy().astype(np.uint8)
        samples.append(np.concatenate([f.rgb, colorize(pred)], axis=0))
    plot = plot_stream(args.out / f"{res.name}_source.png", {"source": res.frame_miou}, res.frame_index,
                       res.frame_weather, res.frame_domain, title=f"{res.name}: per-frame mIoU",
                       samples=samples)
    (args.out / f"{res.name}_source.json").write_text(json.dumps({k: round(v, 4) for k, v in table.items()},
                                                                  indent=2) + "\n")
    print(f"wrote {plot}")
    return 0
